/* The clusterer's hot loops in compiled code: the band index's look-ups, the ranking from
 * the slots found for an article's salient signature to its closest stories, the cosines
 * of the article with their members, term by term, and the exact score of each of those
 * stories; and in the fingerprint, the TF-IDF weights of an article's terms and the choice
 * of the strongest, its MinHash signatures, the hashes its salient terms keep and its
 * count in the term statistics; the band index's keys and its table of recent
 * insertions; the vocabulary's table of term numbers; at a restart, the stored vectors and
 * signatures copied into the window's matrices and the band indexes' keys split and
 * sorted; and, where the worker processes prepare an article, the hashes of its shingles.
 *
 * Each function gives exactly what its numpy or Python counterpart gives
 * (``index.band_matches_numpy``, ``Clusterer._closest_story_rows_numpy``,
 * ``Clusterer._term_products_numpy``, ``Clusterer._score``,
 * ``fingerprint.log_tf_idf_python``, ``fingerprint.strongest_python``,
 * ``index.RecentBuckets``, ``fingerprint.shingle_hashes_python``, ``Vocabulary.ids``,
 * ``Signer.sign_hashes_numpy``, ``TermStatistics.add_document``,
 * ``BandIndex.band_keys_numpy``, ``store.unpack_vectors_numpy``,
 * ``Signer.from_bytes_many_numpy``, ``index.split_by_part_numpy``,
 * ``index.sort_part_numpy``),
 * which stays the reference and runs where this module was not built; the tests hold the
 * two equal.
 * Where numpy makes a call (and a temporary array) of each step on a few thousand
 * elements, these make one pass (aggregator/native.py has what it saves).
 *
 * Arrays come through the buffer protocol (numpy arrays, C-contiguous), so the module needs
 * no numpy headers to build.  The interpreter lock is held throughout: the call takes tens
 * of microseconds, and a writer that let go of the lock would wait for the fetch threads'
 * switch interval (milliseconds) to get it back.  Only the two that move a whole index's
 * entries (``merge_sorted``, ``sort_pairs``) let go of it while they do.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_SHA_INSTRUCTIONS 1
#include <cpuid.h>
#include <immintrin.h>
#endif

typedef struct {
    Py_buffer view;
    int held;
} Buffer;

static void release(Buffer *buffers, int count) {
    for (int i = 0; i < count; i++) {
        if (buffers[i].held) {
            PyBuffer_Release(&buffers[i].view);
            buffers[i].held = 0;
        }
    }
}

/* A C-contiguous buffer of items of ``itemsize`` bytes whose struct format is one of
 * ``formats`` (numpy's codes for the same width differ by platform: 'l' or 'q'). */
static int take(PyObject *object, Buffer *buffer, Py_ssize_t itemsize, const char *formats,
                int writable, const char *name) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, &buffer->view, flags) < 0) {
        return -1;
    }
    buffer->held = 1;
    const char *format = buffer->view.format ? buffer->view.format : "B";
    if (*format == '<' || *format == '=' || *format == '@') {
        format++;
    }
    if (buffer->view.itemsize != itemsize || strlen(format) != 1
            || strchr(formats, *format) == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: items of %zd bytes (format one of '%s') expected, "
                     "got format '%s' of %zd bytes", name, itemsize, formats, format,
                     buffer->view.itemsize);
        return -1;
    }
    return 0;
}

/* How many rows ahead a row's values are fetched: the rows read are scattered over the
 * window's arrays, most of them in no cache. */
#define PREFETCH_AHEAD 8

static int arguments_given(const char *function, Py_ssize_t given, Py_ssize_t wanted) {
    if (given != wanted) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments (%zd given)", function, wanted,
                     given);
        return 0;
    }
    return 1;
}

typedef struct {
    int64_t article_id;
    int32_t slot;
    int32_t agreeing;
} Ranked;

/* Among slots that share as many bands (or agree in as many values), the newest article
 * first: their article ids, distinct, in descending order.  Only the first few of a long
 * run are ever needed, so neither helper sorts a whole run (``qsort`` of the ties took
 * more than a third of this kernel's time on a full window). */

/* Puts the ``k`` newest of ``a[0..n)`` first, in no particular order (quickselect). */
static void select_newest(Ranked *a, Py_ssize_t n, Py_ssize_t k) {
    Py_ssize_t lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        int64_t x = a[lo].article_id, y = a[lo + (hi - lo) / 2].article_id;
        int64_t z = a[hi].article_id;
        int64_t pivot = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        Py_ssize_t i = lo, j = hi;
        while (i <= j) {
            while (a[i].article_id > pivot) {
                i++;
            }
            while (a[j].article_id < pivot) {
                j--;
            }
            if (i <= j) {
                Ranked swapped = a[i];
                a[i++] = a[j];
                a[j--] = swapped;
            }
        }
        /* Now a[lo..j] >= pivot >= a[i..hi], and any slot between holds the pivot. */
        if (target <= j) {
            hi = j;
        } else if (target >= i) {
            lo = i;
        } else {
            return;
        }
    }
}

/* Restores the heap order (the newest at the root) below ``at`` of ``heap[0..size)``. */
static void sift_newest(Ranked *heap, Py_ssize_t size, Py_ssize_t at) {
    Ranked moving = heap[at];
    for (;;) {
        Py_ssize_t child = 2 * at + 1;
        if (child >= size) {
            break;
        }
        if (child + 1 < size && heap[child + 1].article_id > heap[child].article_id) {
            child++;
        }
        if (heap[child].article_id <= moving.article_id) {
            break;
        }
        heap[at] = heap[child];
        at = child;
    }
    heap[at] = moving;
}

/* Whether ``row`` was already taken; takes it if not (open addressing, ``mask + 1`` a power
 * of two at least twice the rows it will hold). */
static int seen_before(int64_t *table, int64_t mask, int64_t row) {
    int64_t at = (row * 0x9E3779B97F4A7C15ULL) >> 7 & mask;
    while (table[at] != -1) {
        if (table[at] == row) {
            return 1;
        }
        at = (at + 1) & mask;
    }
    table[at] = row;
    return 0;
}

/* ``from[0..n)`` into ``to`` in runs of equal ``agreeing``, the largest first (a counting
 * sort: ``counts[v]`` says how many agree in v values, for v from 1 to ``most``, and is
 * left as the end of each run). */
static void most_agreeing_first(const Ranked *from, Py_ssize_t n, Py_ssize_t *counts,
                                Py_ssize_t most, Ranked *to) {
    Py_ssize_t start = 0;
    for (Py_ssize_t agreeing = most; agreeing >= 1; agreeing--) {
        Py_ssize_t size = counts[agreeing];
        counts[agreeing] = start;
        start += size;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        to[counts[from[i].agreeing]++] = from[i];
    }
}

static const char *closest_doc =
    "closest_story_rows(found, alive, article_id, story_row, salient, signature, limit,\n"
    "                   count, band_counts, out) -> int\n\n"
    "The story rows of the first ``count`` distinct stories, closest first, among the live\n"
    "slots of ``found`` (int32, a slot once per band key shared): of those, the ``limit``\n"
    "sharing the most bands (ties to the newest article), then by the number of values of\n"
    "their salient row equal to ``signature`` (uint16), newest first; slots agreeing in no\n"
    "value are dropped.  ``salient``: uint8, a row of 2 x width bytes a slot, the high\n"
    "bytes of its values, then their low bytes.  ``band_counts``: uint16 scratch with a zero\n"
    "for every slot, left so.  Writes the rows to ``out`` (int64) and returns how many.";

static PyObject *closest_story_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("closest_story_rows", nargs, 10)) {
        return NULL;
    }
    Buffer b[8];
    memset(b, 0, sizeof b);
    enum { FOUND, ALIVE, ARTICLE_ID, STORY_ROW, SALIENT, SIGNATURE, COUNTS, OUT };
    Py_ssize_t limit = PyLong_AsSsize_t(args[6]);
    Py_ssize_t count = PyLong_AsSsize_t(args[7]);
    if ((limit == -1 || count == -1) && PyErr_Occurred()) {
        return NULL;
    }
    if (take(args[0], &b[FOUND], 4, "il", 0, "found") < 0
            || take(args[1], &b[ALIVE], 1, "?bB", 0, "alive") < 0
            || take(args[2], &b[ARTICLE_ID], 8, "lq", 0, "article_id") < 0
            || take(args[3], &b[STORY_ROW], 4, "il", 0, "story_row") < 0
            || take(args[4], &b[SALIENT], 1, "B", 0, "salient") < 0
            || take(args[5], &b[SIGNATURE], 2, "H", 0, "signature") < 0
            || take(args[8], &b[COUNTS], 2, "H", 1, "band_counts") < 0
            || take(args[9], &b[OUT], 8, "lq", 1, "out") < 0) {
        release(b, 8);
        return NULL;
    }
    const int32_t *found = b[FOUND].view.buf;
    const uint8_t *alive = b[ALIVE].view.buf;
    const int64_t *article_id = b[ARTICLE_ID].view.buf;
    const int32_t *story_row = b[STORY_ROW].view.buf;
    const uint8_t *salient = b[SALIENT].view.buf;
    const uint16_t *signature = b[SIGNATURE].view.buf;
    uint16_t *band_counts = b[COUNTS].view.buf;
    int64_t *out = b[OUT].view.buf;
    Py_ssize_t found_size = b[FOUND].view.len / 4;
    Py_ssize_t slots = b[ALIVE].view.len;
    Py_ssize_t width = b[SIGNATURE].view.len / 2;
    if (b[ARTICLE_ID].view.len / 8 < slots || b[STORY_ROW].view.len / 4 < slots
            || b[COUNTS].view.len / 2 < slots || width == 0
            || b[SALIENT].view.len / 2 < (Py_ssize_t)slots * width
            || b[OUT].view.len / 8 < count || limit < 0 || count < 0) {
        release(b, 8);
        PyErr_SetString(PyExc_ValueError, "closest_story_rows: arrays of unequal lengths");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < found_size; i++) {
        if (found[i] < 0 || found[i] >= slots) {
            release(b, 8);
            PyErr_Format(PyExc_ValueError, "closest_story_rows: slot %d outside the %zd rows",
                         (int)found[i], slots);
            return NULL;
        }
    }
    Ranked *ranked = PyMem_Malloc(sizeof(Ranked) * (size_t)(found_size ? found_size : 1));
    Ranked *ordered = PyMem_Malloc(sizeof(Ranked) * (size_t)(found_size ? found_size : 1));
    size_t table_size = 2;
    while (table_size < 2 * (size_t)count) {
        table_size <<= 1;
    }
    int64_t *taken = PyMem_Malloc(sizeof(int64_t) * table_size);
    if (ranked == NULL || ordered == NULL || taken == NULL) {
        PyMem_Free(ranked);
        PyMem_Free(ordered);
        PyMem_Free(taken);
        release(b, 8);
        return PyErr_NoMemory();
    }
    Py_ssize_t written = 0;
    /* The distinct slots, each with the bands it shares (one key a band: fewer than 2^16). */
    Py_ssize_t distinct = 0;
    int most_bands = 0;
    for (Py_ssize_t i = 0; i < found_size; i++) {
        int32_t slot = found[i];
        if (band_counts[slot]++ == 0) {
            ranked[distinct].slot = slot;
            distinct++;
        }
        if (band_counts[slot] > most_bands) {
            most_bands = band_counts[slot];
        }
    }
    Py_ssize_t live = 0;
    Py_ssize_t *by_bands = PyMem_Calloc((size_t)most_bands + 1, sizeof(Py_ssize_t));
    Py_ssize_t *by_values = PyMem_Calloc((size_t)width + 2, sizeof(Py_ssize_t));
    if (by_bands == NULL || by_values == NULL) {
        for (Py_ssize_t i = 0; i < distinct; i++) {
            band_counts[ranked[i].slot] = 0;
        }
        written = -1;
        goto done;
    }
    for (Py_ssize_t i = 0; i < distinct; i++) {
        int32_t slot = ranked[i].slot;
        int bands = band_counts[slot];
        band_counts[slot] = 0;
        if (alive[slot]) {
            ranked[live].slot = slot;
            ranked[live].agreeing = bands;  /* the bands, until the values are counted */
            by_bands[bands]++;
            live++;
        }
    }
    /* The ``limit`` sharing the most bands: all above the cut, and of those at the cut the
     * newest. */
    Py_ssize_t kept = live;
    if (live > limit) {
        int cut = most_bands;
        Py_ssize_t above = 0;
        while (cut > 0 && above + by_bands[cut] < limit) {
            above += by_bands[cut];
            cut--;
        }
        Py_ssize_t wanted = limit - above, tied = 0;
        kept = 0;
        for (Py_ssize_t i = 0; i < live; i++) {
            if (ranked[i].agreeing > cut) {
                ranked[kept++] = ranked[i];
            } else if (ranked[i].agreeing == cut) {
                ordered[tied] = ranked[i];
                ordered[tied++].article_id = article_id[ranked[i].slot];
            }
        }
        if (wanted < tied) {
            select_newest(ordered, tied, wanted);
        }
        for (Py_ssize_t i = 0; i < wanted && i < tied; i++) {
            ranked[kept++] = ordered[i];
        }
    }
    /* The values each kept slot agrees in, and a counting sort by them, most first.  A
     * value agrees only where its high byte does: the high bytes, half of each row, bound
     * every slot's count first, and the full rows are read in order of that bound only
     * until the stories that will be taken are certain (a full window: about one slot in
     * ten of those kept). */
    {
        size_t row_bytes = 2 * (size_t)width;
        uint8_t *high = PyMem_Malloc(row_bytes);  /* the signature's high, then low bytes */
        /* Each story row's best count so far: open addressing, ``story_keys`` -1 where
         * free. */
        size_t table_slots = 2;
        while (table_slots < 2 * (size_t)(kept ? kept : 1)) {
            table_slots <<= 1;
        }
        int32_t *story_keys = PyMem_Malloc(sizeof(int32_t) * table_slots);
        int32_t *best_counts = PyMem_Malloc(sizeof(int32_t) * table_slots);
        Py_ssize_t *stories_by_best = PyMem_Calloc((size_t)width + 2, sizeof(Py_ssize_t));
        if (high == NULL || story_keys == NULL || best_counts == NULL
                || stories_by_best == NULL) {
            PyMem_Free(high);
            PyMem_Free(story_keys);
            PyMem_Free(best_counts);
            PyMem_Free(stories_by_best);
            written = -1;
            goto done;
        }
        uint8_t *low = high + width;
        for (Py_ssize_t j = 0; j < width; j++) {
            high[j] = (uint8_t)(signature[j] >> 8);
            low[j] = (uint8_t)(signature[j] & 0xFF);
        }
        Py_ssize_t bounded = 0;
        for (Py_ssize_t i = 0; i < kept; i++) {
            const uint8_t *row = salient + (size_t)ranked[i].slot * row_bytes;
#if defined(__GNUC__)
            if (i + PREFETCH_AHEAD < kept) {
                const char *ahead = (const char *)(
                    salient + (size_t)ranked[i + PREFETCH_AHEAD].slot * row_bytes);
                for (size_t byte = 0; byte < (size_t)width; byte += 64) {
                    __builtin_prefetch(ahead + byte);
                }
            }
#endif
            int32_t bound = 0;
            for (Py_ssize_t j = 0; j < width; j++) {
                bound += row[j] == high[j];
            }
            if (bound) {
                ranked[bounded] = ranked[i];
                ranked[bounded].agreeing = bound;
                by_values[bound]++;
                bounded++;
            }
        }
        most_agreeing_first(ranked, bounded, by_values, width, ordered);
        memset(story_keys, 0xff, sizeof(int32_t) * table_slots);
        size_t mask = table_slots - 1;
        Py_ssize_t genuine = 0, read = 0;
        while (read < bounded) {
            /* Every slot of this bound, read in full. */
            int32_t level = ordered[read].agreeing;
            Py_ssize_t end = read;
            while (end < bounded && ordered[end].agreeing == level) {
                end++;
            }
            for (Py_ssize_t i = read; i < end; i++) {
                int32_t slot = ordered[i].slot;
                const uint8_t *row = salient + (size_t)slot * row_bytes;
#if defined(__GNUC__)
                if (i + PREFETCH_AHEAD < bounded) {
                    const char *ahead = (const char *)(
                        salient + (size_t)ordered[i + PREFETCH_AHEAD].slot * row_bytes);
                    for (size_t byte = 0; byte < row_bytes; byte += 64) {
                        __builtin_prefetch(ahead + byte);
                    }
                    __builtin_prefetch(story_row + ordered[i + PREFETCH_AHEAD].slot);
                }
#endif
                int32_t agreeing = 0;
                for (Py_ssize_t j = 0; j < width; j++) {
                    agreeing += (row[j] == high[j]) & (row[width + j] == low[j]);
                }
                if (!agreeing) {
                    continue;
                }
                ranked[genuine].slot = slot;
                ranked[genuine].agreeing = agreeing;
                genuine++;
                int32_t story = story_row[slot];
                size_t at = ((uint32_t)story * 2654435761u) & mask;
                while (story_keys[at] != -1 && story_keys[at] != story) {
                    at = (at + 1) & mask;
                }
                if (story_keys[at] == -1) {
                    story_keys[at] = story;
                    best_counts[at] = agreeing;
                    stories_by_best[agreeing]++;
                } else if (agreeing > best_counts[at]) {
                    stories_by_best[best_counts[at]]--;
                    stories_by_best[agreeing]++;
                    best_counts[at] = agreeing;
                }
            }
            read = end;
            if (read < bounded) {
                /* The slots not read agree in at most ``next`` values: once ``count``
                 * stories have a slot agreeing in more, the walk below ends before it
                 * reaches any of them. */
                int32_t next = ordered[read].agreeing;
                Py_ssize_t certain = 0;
                for (Py_ssize_t agreeing = width; agreeing > next; agreeing--) {
                    certain += stories_by_best[agreeing];
                }
                if (certain >= count) {
                    break;
                }
            }
        }
        PyMem_Free(high);
        PyMem_Free(story_keys);
        PyMem_Free(best_counts);
        PyMem_Free(stories_by_best);
        memset(by_values, 0, sizeof(Py_ssize_t) * ((size_t)width + 2));
        for (Py_ssize_t i = 0; i < genuine; i++) {
            by_values[ranked[i].agreeing]++;
        }
        most_agreeing_first(ranked, genuine, by_values, width, ordered);
        memset(taken, 0xff, sizeof(int64_t) * table_size);
        /* Walk the runs, each taken newest first (from a heap) only when reached and only
         * as far as needed. */
        Py_ssize_t run = 0;
        while (run < genuine && written < count) {
            Py_ssize_t end = run + 1;
            while (end < genuine && ordered[end].agreeing == ordered[run].agreeing) {
                end++;
            }
            Ranked *heap = ordered + run;
            Py_ssize_t size = end - run;
            /* Read only for the runs reached: a slot's article id is one more row in no
             * cache, and most slots are in runs that the count is reached before. */
            for (Py_ssize_t i = 0; i < size; i++) {
                heap[i].article_id = article_id[heap[i].slot];
            }
            for (Py_ssize_t i = size / 2; i-- > 0;) {
                sift_newest(heap, size, i);
            }
            while (size > 0 && written < count) {
                int64_t row = story_row[heap[0].slot];
                heap[0] = heap[--size];
                sift_newest(heap, size, 0);
                if (!seen_before(taken, (int64_t)table_size - 1, row)) {
                    out[written++] = row;
                }
            }
            run = end;
        }
    }
done:
    PyMem_Free(by_bands);
    PyMem_Free(by_values);
    PyMem_Free(ranked);
    PyMem_Free(ordered);
    PyMem_Free(taken);
    release(b, 8);
    if (written < 0) {
        return PyErr_NoMemory();
    }
    return PyLong_FromSsize_t(written);
}

/* numpy's sum of doubles along a contiguous axis (pairwise summation: eight running sums
 * in blocks of up to 128 values, halves above that), so that a row's sum here is the one
 * ``ndarray.sum(axis=1)`` gives, to the last bit. */
static double pairwise_sum(const double *a, Py_ssize_t n) {
    if (n < 8) {
        double sum = 0.;
        for (Py_ssize_t i = 0; i < n; i++) {
            sum += a[i];
        }
        return sum;
    }
    if (n <= 128) {
        double r[8];
        for (int j = 0; j < 8; j++) {
            r[j] = a[j];
        }
        Py_ssize_t i;
        for (i = 8; i < n - (n % 8); i += 8) {
            for (int j = 0; j < 8; j++) {
                r[j] += a[i + j];
            }
        }
        double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) {
            sum += a[i];
        }
        return sum;
    }
    Py_ssize_t half = n / 2;
    half -= half % 8;
    return pairwise_sum(a, half) + pairwise_sum(a + half, n - half);
}

static PyObject *products_of(const Py_ssize_t *term_ids, const double *term_weights,
                             Py_ssize_t count, PyObject *const *args);

static const char *products_doc =
    "term_products(dense, ids, weights, vector_ids, vector_weights, slots, products,\n"
    "              cosines) -> None\n\n"
    "What each term of the rows ``slots`` (int64) adds to their cosine with a vector given\n"
    "as term ids and weights (two lists): ``products`` (float64, one row a slot, one column\n"
    "a term of ``vector_ids``, int32, and ``vector_weights``, float32) and their sums,\n"
    "``cosines`` (float64).  ``dense``: float64 scratch indexed by term id, zero, left so.";

/* An article's vector, given as two sequences (term ids and weights), as C arrays (to
 * free with PyMem_Free, both, also on failure); -1 with an exception set on failure. */
static int vector_given(const char *function, PyObject *ids, PyObject *weights,
                        Py_ssize_t **term_ids, double **term_weights, Py_ssize_t *count) {
    *term_ids = NULL;
    *term_weights = NULL;
    PyObject *ids_given = PySequence_Fast(ids, "ids: a sequence expected");
    if (ids_given == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: ids: a sequence expected", function);
        return -1;
    }
    PyObject *weights_given = PySequence_Fast(weights, "weights: a sequence expected");
    if (weights_given == NULL) {
        PyErr_Format(PyExc_TypeError, "%s: weights: a sequence expected", function);
        Py_DECREF(ids_given);
        return -1;
    }
    int result = -1;
    Py_ssize_t given = PySequence_Fast_GET_SIZE(ids_given);
    *term_ids = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(given ? given : 1));
    *term_weights = PyMem_Malloc(sizeof(double) * (size_t)(given ? given : 1));
    if (*term_ids == NULL || *term_weights == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(weights_given) != given) {
        PyErr_Format(PyExc_ValueError, "%s: ids and weights of unequal lengths", function);
        goto done;
    }
    for (Py_ssize_t k = 0; k < given; k++) {
        (*term_ids)[k] = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(ids_given, k),
                                            PyExc_OverflowError);
        (*term_weights)[k] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(weights_given, k));
        if (PyErr_Occurred()) {
            goto done;
        }
    }
    *count = given;
    result = 0;
done:
    Py_DECREF(ids_given);
    Py_DECREF(weights_given);
    return result;
}

static PyObject *term_products(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("term_products", nargs, 8)) {
        return NULL;
    }
    Py_ssize_t *term_ids, count = 0;
    double *term_weights;
    PyObject *result = NULL;
    if (vector_given("term_products", args[1], args[2], &term_ids, &term_weights,
                     &count) == 0) {
        result = products_of(term_ids, term_weights, count, args);
    }
    PyMem_Free(term_ids);
    PyMem_Free(term_weights);
    return result;
}

/* Fetches the vector row of ``slot`` ahead of its use. */
static inline void prefetch_row(const int32_t *vector_ids, const float *vector_weights,
                                int64_t slot, Py_ssize_t width) {
#if defined(__GNUC__)
    size_t ahead = (size_t)slot * (size_t)width;
    for (size_t byte = 0; byte < (size_t)width * 4; byte += 64) {
        __builtin_prefetch((const char *)(vector_ids + ahead) + byte);
        __builtin_prefetch((const char *)(vector_weights + ahead) + byte);
    }
#else
    (void)vector_ids, (void)vector_weights, (void)slot, (void)width;
#endif
}

/* An article's vector spread out by term id, for the rows compared with it: ``dense``
 * (``terms`` long, zero elsewhere) holds each of its terms' weights, and ``present`` one
 * bit a term id, set for its terms.  A row's terms are scattered over the whole
 * vocabulary and few of them are the article's: the bits, a few kilobytes that stay in the
 * first-level cache, answer those without a read of ``dense`` (eight bytes a term, hundreds
 * of kilobytes, most of it in no cache when the rows have streamed through). */
typedef struct {
    double *dense;
    uint64_t *present;
    Py_ssize_t terms;
} Spread;

/* Spreads ``count`` terms into ``dense``; -1 with MemoryError set if the bits cannot be
 * had (``dense`` is then left as it was).  Undone by ``unspread``, also after a failure. */
static int spread(Spread *spread_out, double *dense, Py_ssize_t terms,
                  const Py_ssize_t *term_ids, const double *term_weights, Py_ssize_t count) {
    spread_out->dense = dense;
    spread_out->terms = terms;
    spread_out->present = PyMem_Calloc((size_t)(terms / 64 + 1), sizeof(uint64_t));
    if (spread_out->present == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        dense[term_ids[k]] = term_weights[k];
        spread_out->present[term_ids[k] >> 6] |= (uint64_t)1 << (term_ids[k] & 63);
    }
    return 0;
}

static void unspread(Spread *spread_out, const Py_ssize_t *term_ids, Py_ssize_t count) {
    if (spread_out->present == NULL) {
        return;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        spread_out->dense[term_ids[k]] = 0.;
    }
    PyMem_Free(spread_out->present);
    spread_out->present = NULL;
}

/* What each term of the vector row of ``slot`` adds to its cosine with the spread vector,
 * into ``products``; the largest of them, from 0.0, in ``strongest``.  -1 with an
 * exception naming ``function`` for a term outside the vocabulary. */
static inline int row_products(const Spread *article, const int32_t *vector_ids,
                               const float *vector_weights, int64_t slot, Py_ssize_t width,
                               const char *function, double *products, double *strongest) {
    const int32_t *ids = vector_ids + (size_t)slot * (size_t)width;
    const float *weights = vector_weights + (size_t)slot * (size_t)width;
    double largest = 0.;
    for (Py_ssize_t j = 0; j < width; j++) {
        int32_t id = ids[j];
        if (id < 0 || id >= article->terms) {
            PyErr_Format(PyExc_ValueError, "%s: term %d outside the %zd terms", function,
                         (int)id, article->terms);
            return -1;
        }
        /* The same product as ``dense[id] * weight`` to the last bit: ``dense`` is zero
         * where the bit is not set. */
        double value = (article->present[id >> 6] >> (id & 63)) & 1 ? article->dense[id] : 0.;
        products[j] = value * (double)weights[j];
        if (products[j] > largest) {
            largest = products[j];
        }
    }
    *strongest = largest;
    return 0;
}

/* ``term_products`` once the article's terms are C arrays. */
static PyObject *products_of(const Py_ssize_t *term_ids, const double *term_weights,
                             Py_ssize_t count, PyObject *const *args) {
    Buffer b[6];
    memset(b, 0, sizeof b);
    enum { DENSE, VECTOR_IDS, VECTOR_WEIGHTS, SLOTS, PRODUCTS, COSINES };
    if (take(args[0], &b[DENSE], 8, "d", 1, "dense") < 0
            || take(args[3], &b[VECTOR_IDS], 4, "il", 0, "vector_ids") < 0
            || take(args[4], &b[VECTOR_WEIGHTS], 4, "f", 0, "vector_weights") < 0
            || take(args[5], &b[SLOTS], 8, "lq", 0, "slots") < 0
            || take(args[6], &b[PRODUCTS], 8, "d", 1, "products") < 0
            || take(args[7], &b[COSINES], 8, "d", 1, "cosines") < 0) {
        release(b, 6);
        return NULL;
    }
    double *dense = b[DENSE].view.buf;
    const int32_t *vector_ids = b[VECTOR_IDS].view.buf;
    const float *vector_weights = b[VECTOR_WEIGHTS].view.buf;
    const int64_t *slots = b[SLOTS].view.buf;
    double *products = b[PRODUCTS].view.buf;
    double *cosines = b[COSINES].view.buf;
    Py_ssize_t terms = b[DENSE].view.len / 8;
    Py_ssize_t members = b[SLOTS].view.len / 8;
    Py_ssize_t width = b[VECTOR_IDS].view.ndim == 2 ? b[VECTOR_IDS].view.shape[1] : 0;
    Py_ssize_t rows = width ? b[VECTOR_IDS].view.len / 4 / width : 0;
    if (width == 0 || b[VECTOR_WEIGHTS].view.ndim != 2
            || b[VECTOR_WEIGHTS].view.shape[1] != width
            || b[VECTOR_WEIGHTS].view.len / 4 < rows * width
            || b[PRODUCTS].view.len / 8 != members * width
            || b[COSINES].view.len / 8 != members) {
        release(b, 6);
        PyErr_SetString(PyExc_ValueError, "term_products: arrays of unequal shapes");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < members; i++) {
        if (slots[i] < 0 || slots[i] >= rows) {
            release(b, 6);
            PyErr_Format(PyExc_ValueError, "term_products: slot %lld outside the %zd rows",
                         (long long)slots[i], rows);
            return NULL;
        }
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        if (term_ids[k] < 0 || term_ids[k] >= terms) {
            release(b, 6);
            PyErr_Format(PyExc_ValueError, "term_products: term %zd outside the %zd terms",
                         term_ids[k], terms);
            return NULL;
        }
    }
    Spread article;
    int failed = spread(&article, dense, terms, term_ids, term_weights, count) < 0;
    for (Py_ssize_t i = 0; i < members && !failed; i++) {
        if (i + PREFETCH_AHEAD < members) {
            prefetch_row(vector_ids, vector_weights, slots[i + PREFETCH_AHEAD], width);
        }
        double *row = products + (size_t)i * (size_t)width, strongest;
        failed = row_products(&article, vector_ids, vector_weights, slots[i], width,
                              "term_products", row, &strongest) < 0;
        if (!failed) {
            cosines[i] = pairwise_sum(row, width);
        }
    }
    unspread(&article, term_ids, count);
    release(b, 6);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A sum of doubles in order, from zero: what ``Clusterer._score`` adds a story's values
 * with (``in_order_sum``), whatever the version of Python (its ``sum`` compensates from
 * 3.12 on). */
static double in_order_sum(const double *values, Py_ssize_t count) {
    double sum = 0.;
    for (Py_ssize_t i = 0; i < count; i++) {
        sum += values[i];
    }
    return sum;
}

#define DAY_S 86400.0
/* How many of a story's latest members its support is counted over (MAX_SUPPORT_MEMBERS). */
#define SUPPORT_MEMBERS 16
enum { NOT_HELD_BACK, HELD_BACK_UNSUPPORTED, HELD_BACK_ONE_TERM };

static const char *scores_doc =
    "story_scores(dense, ids, weights, vector_ids, vector_weights, word_count, members,\n"
    "             story_rows, columns, tables, article, best, positions, values,\n"
    "             held_back) -> int\n\n"
    "The best of the live stories of ``story_rows`` (int64 rows of the story columns) for an\n"
    "article, each scored exactly as ``Clusterer._score`` scores it: the mean cosine of\n"
    "the article's vector (``ids`` and ``weights``, two lists) with the story's ``members``\n"
    "(one int64 buffer of slots a story, in the order of ``story_rows``), the time factor and\n"
    "the threshold of the pair's length, and whether member support or breadth holds the\n"
    "story back.  ``vector_ids`` (int32), ``vector_weights`` (float32) and ``word_count``\n"
    "(int32): the window's rows; ``dense``: float64 scratch indexed by term id, zero, left\n"
    "so.  ``columns``: the story columns last_ts, first_ts, dated_first_ts, dated_last_ts\n"
    "(float64) and canonical_slot (int64); ``tables``: the threshold and the time tolerance\n"
    "of each pair length (float64); ``article``: its time, word count, whether it is dated,\n"
    "and the settings window_days and story_span_days in seconds, undated_time_factor,\n"
    "member_anchor and evidence_beyond_one_term.  ``best``: (count, slack): the stories kept\n"
    "are those whose margin (score less threshold) is at least the count-th largest less\n"
    "the slack, in the order of ``story_rows``.  For the k-th kept: its position in\n"
    "``story_rows`` in ``positions`` (int64), cosine, time factor, threshold and score in\n"
    "row k of ``values`` (float64, four a story) and 0, 1 (unsupported) or 2 (one term) in\n"
    "``held_back`` (int8).  Returns how many are kept.";

/* The ``rank``-th largest of ``values`` (1 the largest), ``rank`` at most ``count``. */
static double rank_th_largest(const double *values, Py_ssize_t count, Py_ssize_t rank,
                              double *scratch) {
    /* ``scratch``: the ``rank`` largest so far, descending (a handful: insertion). */
    Py_ssize_t held = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        double value = values[i];
        if (held == rank && !(value > scratch[rank - 1])) {
            continue;
        }
        Py_ssize_t at = held < rank ? held++ : rank - 1;
        while (at > 0 && scratch[at - 1] < value) {
            scratch[at] = scratch[at - 1];
            at--;
        }
        scratch[at] = value;
    }
    return scratch[rank - 1];
}

/* Whether ``given`` is a tuple of ``size`` items; if not, a TypeError saying ``what``. */
static int tuple_given(PyObject *given, Py_ssize_t size, const char *what) {
    if (PyTuple_Check(given) && PyTuple_GET_SIZE(given) == size) {
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "story_scores: %s expected", what);
    return 0;
}

static PyObject *story_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("story_scores", nargs, 15)) {
        return NULL;
    }
    enum { DENSE, VECTOR_IDS, VECTOR_WEIGHTS, WORD_COUNT, STORY_ROWS, LAST_TS, FIRST_TS,
           DATED_FIRST_TS, DATED_LAST_TS, CANONICAL_SLOT, THRESHOLDS, SIGMAS, POSITIONS,
           VALUES, HELD_BACK, MEMBER, BUFFERS };
    Buffer b[BUFFERS];
    memset(b, 0, sizeof b);
    Py_ssize_t *term_ids = NULL, count = 0;
    double *term_weights = NULL, *products = NULL, *cosines = NULL, *beyond = NULL;
    double *scored = NULL;
    int64_t *flat = NULL;
    Py_ssize_t *starts = NULL, *lives = NULL;
    PyObject *members = NULL, *result = NULL;
    Spread spread_vector = {NULL, NULL, 0};
    double article[8];
    if (!tuple_given(args[8], 5, "columns: a tuple of 5 arrays")
            || !tuple_given(args[9], 2, "tables: a tuple of 2 arrays")
            || !tuple_given(args[10], 8, "article: a tuple of 8 numbers")
            || !tuple_given(args[11], 2, "best: a tuple (count, slack)")) {
        goto done;
    }
    for (int k = 0; k < 8; k++) {
        article[k] = PyFloat_AsDouble(PyTuple_GET_ITEM(args[10], k));
        if (PyErr_Occurred()) {
            goto done;
        }
    }
    Py_ssize_t best_count = PyNumber_AsSsize_t(PyTuple_GET_ITEM(args[11], 0),
                                               PyExc_OverflowError);
    double slack = PyFloat_AsDouble(PyTuple_GET_ITEM(args[11], 1));
    if (PyErr_Occurred()) {
        goto done;
    }
    if (best_count < 1) {
        PyErr_SetString(PyExc_ValueError, "story_scores: best: a count of at least 1 expected");
        goto done;
    }
    if (take(args[0], &b[DENSE], 8, "d", 1, "dense") < 0
            || take(args[3], &b[VECTOR_IDS], 4, "il", 0, "vector_ids") < 0
            || take(args[4], &b[VECTOR_WEIGHTS], 4, "f", 0, "vector_weights") < 0
            || take(args[5], &b[WORD_COUNT], 4, "il", 0, "word_count") < 0
            || take(args[7], &b[STORY_ROWS], 8, "lq", 0, "story_rows") < 0
            || take(PyTuple_GET_ITEM(args[8], 0), &b[LAST_TS], 8, "d", 0, "last_ts") < 0
            || take(PyTuple_GET_ITEM(args[8], 1), &b[FIRST_TS], 8, "d", 0, "first_ts") < 0
            || take(PyTuple_GET_ITEM(args[8], 2), &b[DATED_FIRST_TS], 8, "d", 0,
                    "dated_first_ts") < 0
            || take(PyTuple_GET_ITEM(args[8], 3), &b[DATED_LAST_TS], 8, "d", 0,
                    "dated_last_ts") < 0
            || take(PyTuple_GET_ITEM(args[8], 4), &b[CANONICAL_SLOT], 8, "lq", 0,
                    "canonical_slot") < 0
            || take(PyTuple_GET_ITEM(args[9], 0), &b[THRESHOLDS], 8, "d", 0, "thresholds") < 0
            || take(PyTuple_GET_ITEM(args[9], 1), &b[SIGMAS], 8, "d", 0, "sigmas") < 0
            || take(args[12], &b[POSITIONS], 8, "lq", 1, "positions") < 0
            || take(args[13], &b[VALUES], 8, "d", 1, "values") < 0
            || take(args[14], &b[HELD_BACK], 1, "bB", 1, "held_back") < 0) {
        goto done;
    }
    const int32_t *vector_ids = b[VECTOR_IDS].view.buf;
    const float *vector_weights = b[VECTOR_WEIGHTS].view.buf;
    const int32_t *word_count = b[WORD_COUNT].view.buf;
    const int64_t *story_rows = b[STORY_ROWS].view.buf;
    const double *last_ts = b[LAST_TS].view.buf, *first_ts = b[FIRST_TS].view.buf;
    const double *dated_first_ts = b[DATED_FIRST_TS].view.buf;
    const double *dated_last_ts = b[DATED_LAST_TS].view.buf;
    const int64_t *canonical_slot = b[CANONICAL_SLOT].view.buf;
    const double *thresholds = b[THRESHOLDS].view.buf, *sigmas = b[SIGMAS].view.buf;
    int64_t *positions = b[POSITIONS].view.buf;
    double *values = b[VALUES].view.buf;
    int8_t *held_back = b[HELD_BACK].view.buf;
    Py_ssize_t terms = b[DENSE].view.len / 8;
    Py_ssize_t width = b[VECTOR_IDS].view.ndim == 2 ? b[VECTOR_IDS].view.shape[1] : 0;
    Py_ssize_t rows = b[WORD_COUNT].view.len / 4;
    Py_ssize_t stories = b[STORY_ROWS].view.len / 8;
    Py_ssize_t story_capacity = b[LAST_TS].view.len / 8;
    Py_ssize_t lengths = b[THRESHOLDS].view.len / 8;
    if (width == 0 || b[VECTOR_WEIGHTS].view.ndim != 2
            || b[VECTOR_WEIGHTS].view.shape[1] != width
            || b[VECTOR_IDS].view.len / 4 < rows * width
            || b[VECTOR_WEIGHTS].view.len / 4 < rows * width
            || b[FIRST_TS].view.len / 8 != story_capacity
            || b[DATED_FIRST_TS].view.len / 8 != story_capacity
            || b[DATED_LAST_TS].view.len / 8 != story_capacity
            || b[CANONICAL_SLOT].view.len / 8 != story_capacity
            || lengths == 0 || b[SIGMAS].view.len / 8 != lengths
            || b[POSITIONS].view.len / 8 < stories || b[VALUES].view.len / 8 < 4 * stories
            || b[HELD_BACK].view.len < stories) {
        PyErr_SetString(PyExc_ValueError, "story_scores: arrays of unequal shapes");
        goto done;
    }
    members = PySequence_Fast(args[6], "story_scores: members: a sequence expected");
    if (members == NULL) {
        goto done;
    }
    if (PySequence_Fast_GET_SIZE(members) != stories) {
        PyErr_SetString(PyExc_ValueError,
                        "story_scores: members and story_rows of unequal lengths");
        goto done;
    }
    if (vector_given("story_scores", args[1], args[2], &term_ids, &term_weights,
                     &count) < 0) {
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        if (term_ids[k] < 0 || term_ids[k] >= terms) {
            PyErr_Format(PyExc_ValueError, "story_scores: term %zd outside the %zd terms",
                         term_ids[k], terms);
            goto done;
        }
    }
    const double ts = article[0], window_s = article[3], span_s = article[4];
    const double undated_factor = article[5], member_anchor = article[6];
    const double evidence = article[7];
    const int64_t article_words = (int64_t)article[1] > 1 ? (int64_t)article[1] : 1;
    const int article_dated = article[2] != 0.;

    /* The live stories (Clusterer._live) and their members, in one array: the members'
     * rows are then read with those of the next stories fetched ahead (a story has a few
     * members; most rows are in no cache). */
    starts = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(stories + 1));
    lives = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(stories ? stories : 1));
    if (starts == NULL || lives == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t live = 0, total = 0, flat_capacity = 0;
    for (Py_ssize_t s = 0; s < stories; s++) {
        int64_t row = story_rows[s];
        if (row < 0 || row >= story_capacity) {
            PyErr_Format(PyExc_ValueError, "story_scores: story row %lld outside the %zd rows",
                         (long long)row, story_capacity);
            goto done;
        }
        if (!(ts - last_ts[row] <= window_s && ts - first_ts[row] <= span_s)) {
            continue;
        }
        if (take(PySequence_Fast_GET_ITEM(members, s), &b[MEMBER], 8, "lq", 0,
                 "members") < 0) {
            goto done;
        }
        const int64_t *slots = b[MEMBER].view.buf;
        Py_ssize_t size = b[MEMBER].view.len / 8;
        int64_t canonical = canonical_slot[row];
        if (size == 0 || canonical < 0 || canonical >= rows) {
            release(&b[MEMBER], 1);
            PyErr_Format(PyExc_ValueError, "story_scores: story row %lld has no member or "
                         "its canonical outside the rows", (long long)row);
            goto done;
        }
        if (total + size > flat_capacity) {
            flat_capacity = 2 * (total + size) > 256 ? 2 * (total + size) : 256;
            int64_t *wider = PyMem_Realloc(flat, sizeof(int64_t) * (size_t)flat_capacity);
            if (wider == NULL) {
                release(&b[MEMBER], 1);
                PyErr_NoMemory();
                goto done;
            }
            flat = wider;
        }
        for (Py_ssize_t m = 0; m < size; m++) {
            if (slots[m] < 0 || slots[m] >= rows) {
                PyErr_Format(PyExc_ValueError, "story_scores: slot %lld outside the %zd rows",
                             (long long)slots[m], rows);
                release(&b[MEMBER], 1);
                goto done;
            }
            flat[total + m] = slots[m];
        }
        release(&b[MEMBER], 1);
        lives[live] = s;
        starts[live++] = total;
        total += size;
    }
    starts[live] = total;
    products = PyMem_Malloc(sizeof(double) * (size_t)width);
    cosines = PyMem_Malloc(sizeof(double) * (size_t)(total ? total : 1));
    beyond = PyMem_Malloc(sizeof(double) * (size_t)(total ? total : 1));
    scored = PyMem_Malloc(sizeof(double) * (size_t)(6 * live + best_count));
    if (products == NULL || cosines == NULL || beyond == NULL || scored == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (spread(&spread_vector, b[DENSE].view.buf, terms, term_ids, term_weights, count) < 0) {
        goto done;
    }
    /* As term_products: each term's product, the row's cosine their numpy sum; and what is
     * left without the strongest (``beyond_one_term``: its max from 0.0). */
    for (Py_ssize_t i = 0; i < total; i++) {
        if (i + PREFETCH_AHEAD < total) {
            prefetch_row(vector_ids, vector_weights, flat[i + PREFETCH_AHEAD], width);
        }
        double strongest;
        if (row_products(&spread_vector, vector_ids, vector_weights, flat[i], width,
                         "story_scores", products, &strongest) < 0) {
            goto done;
        }
        cosines[i] = pairwise_sum(products, width);
        beyond[i] = cosines[i] - strongest;
    }
    /* Clusterer._score, story by story: cosine, factor, threshold, score and what
     * held it back in ``scored``, five a story; the margins (score less threshold) after
     * them. */
    double *margins = scored + 5 * live, *largest = margins + live;
    for (Py_ssize_t k = 0; k < live; k++) {
        int64_t row = story_rows[lives[k]];
        const double *own = cosines + starts[k];
        Py_ssize_t size = starts[k + 1] - starts[k];
        double similarity = in_order_sum(own, size) / (double)size;
        int64_t canonical = canonical_slot[row];
        int64_t canonical_words = word_count[canonical] > 1 ? word_count[canonical] : 1;
        int64_t words = (int64_t)sqrt((double)(article_words * canonical_words));
        Py_ssize_t length = words < lengths - 1 ? (Py_ssize_t)words : lengths - 1;
        double threshold = thresholds[length], sigma_days = sigmas[length];
        double factor = undated_factor;
        if (article_dated && dated_first_ts[row] <= dated_last_ts[row]) {
            double gap = 0.;
            if (dated_first_ts[row] - ts > gap) {
                gap = dated_first_ts[row] - ts;
            }
            if (ts - dated_last_ts[row] > gap) {
                gap = ts - dated_last_ts[row];
            }
            gap /= DAY_S;
            factor = exp(-(gap * gap) / (2.0 * sigma_days * sigma_days));
        }
        int held = NOT_HELD_BACK;
        if (similarity * factor >= threshold) {
            /* Clusterer._supported, over the latest members */
            Py_ssize_t latest = size < SUPPORT_MEMBERS ? size : SUPPORT_MEMBERS;
            if (latest > 1) {
                double floor_value = member_anchor * threshold;
                Py_ssize_t support = 0;
                for (Py_ssize_t m = size - latest; m < size; m++) {
                    support += own[m] >= floor_value;
                }
                if (!(support * 2 > latest)) {
                    held = HELD_BACK_UNSUPPORTED;
                }
            }
            /* Clusterer._broad */
            double required = evidence * threshold;
            if (held == NOT_HELD_BACK && required != 0.
                    && !(in_order_sum(beyond + starts[k], size) / (double)size * factor
                         >= required)) {
                held = HELD_BACK_ONE_TERM;
            }
        }
        double score = held ? 0. : similarity * factor;
        double *story = scored + 5 * k;
        story[0] = similarity;
        story[1] = factor;
        story[2] = threshold;
        story[3] = score;
        story[4] = (double)held;
        margins[k] = score - threshold;
    }
    /* The best ``best_count`` and those within the slack of the last of them. */
    double cut = live > best_count
        ? rank_th_largest(margins, live, best_count, largest) - slack : -INFINITY;
    Py_ssize_t kept = 0;
    for (Py_ssize_t k = 0; k < live; k++) {
        if (live <= best_count || margins[k] >= cut) {
            positions[kept] = lives[k];
            memcpy(values + 4 * kept, scored + 5 * k, 4 * sizeof(double));
            held_back[kept] = (int8_t)scored[5 * k + 4];
            kept++;
        }
    }
    result = PyLong_FromSsize_t(kept);
done:
    unspread(&spread_vector, term_ids, count);
    PyMem_Free(term_ids);
    PyMem_Free(term_weights);
    PyMem_Free(products);
    PyMem_Free(cosines);
    PyMem_Free(beyond);
    PyMem_Free(scored);
    PyMem_Free(flat);
    PyMem_Free(starts);
    PyMem_Free(lives);
    Py_XDECREF(members);
    release(b, BUFFERS);
    return result;
}

static const char *matches_doc =
    "band_matches(keys, slots, wanted) -> bytes\n\n"
    "The ``slots`` (int32) of every position whose key in ``keys`` (uint32, sorted) equals\n"
    "one of ``wanted`` (uint32): for each wanted key in turn, its run of positions in\n"
    "order; as int32 values in a bytes object.";

/* The binary searches of all the wanted keys advance together, one level at a time, so
 * that the memory fetches of different keys overlap: alone, each level of each search
 * waits for its own cache miss (the keys of a large window fill several megabytes). */
static PyObject *band_matches(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("band_matches", nargs, 3)) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof b);
    enum { KEYS, SLOTS, WANTED };
    if (take(args[0], &b[KEYS], 4, "IL", 0, "keys") < 0
            || take(args[1], &b[SLOTS], 4, "il", 0, "slots") < 0
            || take(args[2], &b[WANTED], 4, "IL", 0, "wanted") < 0) {
        release(b, 3);
        return NULL;
    }
    const uint32_t *keys = b[KEYS].view.buf;
    const int32_t *slots = b[SLOTS].view.buf;
    const uint32_t *wanted = b[WANTED].view.buf;
    Py_ssize_t size = b[KEYS].view.len / 4;
    Py_ssize_t count = b[WANTED].view.len / 4;
    if (b[SLOTS].view.len / 4 < size) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "band_matches: fewer slots than keys");
        return NULL;
    }
    Py_ssize_t *start = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    Py_ssize_t *length = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    if (start == NULL || length == NULL) {
        PyMem_Free(start);
        PyMem_Free(length);
        release(b, 3);
        return PyErr_NoMemory();
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t k = 0; k < count; k++) {
        start[k] = 0;
        length[k] = 0;
    }
    if (size > 0) {
        /* Branch-free lower bounds: the first position whose key is not below wanted[k]
         * lies in [start[k], start[k] + span] at every level. */
        Py_ssize_t span = size;
        while (span > 1) {
            Py_ssize_t half = span / 2;
            for (Py_ssize_t k = 0; k < count; k++) {
                start[k] = keys[start[k] + half - 1] < wanted[k] ? start[k] + half : start[k];
#if defined(__GNUC__)
                __builtin_prefetch(keys + start[k] + (span - half) / 2);
#endif
            }
            span -= half;
        }
        for (Py_ssize_t k = 0; k < count; k++) {
            Py_ssize_t at = start[k] + (keys[start[k]] < wanted[k]);
            Py_ssize_t end = at;
            while (end < size && keys[end] == wanted[k]) {
                end++;
            }
            start[k] = at;
            length[k] = end - at;
            total += end - at;
        }
    }
    PyObject *found = PyBytes_FromStringAndSize(NULL, total * 4);
    if (found != NULL) {
        int32_t *out = (int32_t *)PyBytes_AS_STRING(found);
        for (Py_ssize_t k = 0; k < count; k++) {
            memcpy(out, slots + start[k], sizeof(int32_t) * (size_t)length[k]);
            out += length[k];
        }
    }
    PyMem_Free(start);
    PyMem_Free(length);
    release(b, 3);
    return found;
}

static const char *weights_doc =
    "log_tf_idf(counts, frequency, priors, numerator, prior_docs, out) -> None\n\n"
    "``out[i] = (1 + log(counts[i])) * log(numerator / (frequency[i] + prior_docs *\n"
    "priors[i] + 0.5))`` for each term (counts, priors and out float64, frequency int32),\n"
    "each operation in that order and each logarithm the C library's, as ``math.log``\n"
    "computes it.";

/* One term's weight, as ``fingerprint.log_tf_idf_python`` computes it: the operations
 * numpy does, in its order, one rounding each (the module is built without contracting a
 * multiply and an add into one), and the C library's logarithm, as ``math.log``.  -1 where
 * ``math.log`` would refuse the count or the ratio (not positive, or not finite).  Both
 * ``log_tf_idf`` and ``tf_idf_weights`` weigh through it, so they cannot differ. */
static int weigh(double count, int32_t frequency, double prior, double numerator,
                 double prior_docs, double *weight) {
    double ratio = numerator / ((double)frequency + prior_docs * prior + 0.5);
    if (!(count > 0.0) || !(ratio > 0.0) || isinf(count) || isinf(ratio)) {
        return -1;
    }
    *weight = (1.0 + log(count)) * log(ratio);
    return 0;
}

/* ``fingerprint.term_weights``'s arithmetic, one term at a time: it took two Python-level
 * ``math.log`` calls a term. */
static PyObject *log_tf_idf(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("log_tf_idf", nargs, 6)) {
        return NULL;
    }
    double numerator = PyFloat_AsDouble(args[3]);
    double prior_docs = PyFloat_AsDouble(args[4]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[4];
    memset(b, 0, sizeof b);
    enum { COUNTS, FREQUENCY, PRIORS, OUT };
    if (take(args[0], &b[COUNTS], 8, "d", 0, "counts") < 0
            || take(args[1], &b[FREQUENCY], 4, "il", 0, "frequency") < 0
            || take(args[2], &b[PRIORS], 8, "d", 0, "priors") < 0
            || take(args[5], &b[OUT], 8, "d", 1, "out") < 0) {
        release(b, 4);
        return NULL;
    }
    Py_ssize_t count = b[COUNTS].view.len / 8;
    if (b[FREQUENCY].view.len / 4 != count || b[PRIORS].view.len / 8 != count
            || b[OUT].view.len / 8 != count) {
        release(b, 4);
        PyErr_SetString(PyExc_ValueError,
                        "log_tf_idf: counts, frequency, priors and out differ in length");
        return NULL;
    }
    const double *counts = b[COUNTS].view.buf;
    const int32_t *frequency = b[FREQUENCY].view.buf;
    const double *priors = b[PRIORS].view.buf;
    double *out = b[OUT].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        /* math.log refuses what is not positive: so does this, naming the term. */
        if (weigh(counts[i], frequency[i], priors[i], numerator, prior_docs, &out[i]) < 0) {
            release(b, 4);
            PyErr_Format(PyExc_ValueError, "log_tf_idf: term %zd: its count or its ratio is "
                         "not positive and finite", i);
            return NULL;
        }
    }
    release(b, 4);
    Py_RETURN_NONE;
}

static const char *min_hashes_doc =
    "min_hashes(a, b, hashes, ends, out)\n\n"
    "MinHash signatures under the permutations ``h -> a * h + b mod 2^32`` (a and b uint32,\n"
    "one of each a permutation): for each set of ``hashes`` (uint32), the smallest permuted\n"
    "value of its items under each permutation, as ``Signer._sign_group`` computes them.\n"
    "``ends`` (int64): where each set ends in ``hashes``, every set holding at least one\n"
    "item; None for one set of all of them.  Writes one row of ``out`` (uint32, sets x\n"
    "permutations) a set.";

/* ``Signer.sign_hashes``: numpy made a (permutations x items) array and three passes over
 * it for an article's salient signature, a few dozen items, where the calls cost more
 * than the arithmetic.  The same unsigned 32-bit arithmetic, wrapping as numpy's does. */
static PyObject *min_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("min_hashes", nargs, 5)) {
        return NULL;
    }
    Buffer b[5];
    memset(b, 0, sizeof b);
    enum { A, B, HASHES, OUT, ENDS };
    if (take(args[0], &b[A], 4, "IL", 0, "a") < 0
            || take(args[1], &b[B], 4, "IL", 0, "b") < 0
            || take(args[2], &b[HASHES], 4, "IL", 0, "hashes") < 0
            || take(args[4], &b[OUT], 4, "IL", 1, "out") < 0
            || (args[3] != Py_None && take(args[3], &b[ENDS], 8, "lq", 0, "ends") < 0)) {
        release(b, 5);
        return NULL;
    }
    Py_ssize_t permutations = b[A].view.len / 4, items = b[HASHES].view.len / 4;
    Py_ssize_t sets = args[3] == Py_None ? 1 : b[ENDS].view.len / 8;
    const int64_t *ends = args[3] == Py_None ? NULL : b[ENDS].view.buf;
    const char *problem = NULL;
    if (b[B].view.len / 4 != permutations) {
        problem = "a and b differ in length";
    } else if (b[OUT].view.len / 4 != sets * permutations) {
        problem = "out is not one row of permutations a set";
    } else {
        int64_t start = 0;
        for (Py_ssize_t set = 0; set < sets && problem == NULL; set++) {
            int64_t end = ends == NULL ? items : ends[set];
            if (end <= start || end > items) {
                problem = "a set is empty, or ends are not increasing within hashes";
            }
            start = end;
        }
        if (problem == NULL && start != items) {
            problem = "the last set does not end with hashes";
        }
    }
    if (problem != NULL) {
        release(b, 5);
        PyErr_Format(PyExc_ValueError, "min_hashes: %s", problem);
        return NULL;
    }
    const uint32_t *a = b[A].view.buf, *add = b[B].view.buf, *hashes = b[HASHES].view.buf;
    uint32_t *out = b[OUT].view.buf;
    int64_t start = 0;
    for (Py_ssize_t set = 0; set < sets; set++) {
        int64_t end = ends == NULL ? items : ends[set];
        uint32_t *row = out + set * permutations;
        for (Py_ssize_t p = 0; p < permutations; p++) {
            row[p] = UINT32_MAX;
        }
        /* Item by item, every permutation: the inner loop runs over contiguous rows. */
        for (int64_t i = start; i < end; i++) {
            uint32_t h = hashes[i];
            for (Py_ssize_t p = 0; p < permutations; p++) {
                uint32_t value = a[p] * h + add[p];
                row[p] = value < row[p] ? value : row[p];
            }
        }
        start = end;
    }
    release(b, 5);
    Py_RETURN_NONE;
}

static const char *count_document_doc =
    "count_document(ids, frequency, last_article, article_id)\n\n"
    "One document counted with the terms ``ids`` (int32 or int64, each once): each term's\n"
    "``frequency`` (int32) up by one, and its ``last_article`` (int64) raised to\n"
    "``article_id``, as ``TermStatistics.add_document`` does with numpy.  An id outside\n"
    "either array raises IndexError before anything is written.";

/* ``TermStatistics.add_document``: six numpy calls of an article's hundred-odd terms (two
 * gathers, two scatters, an addition and a maximum) made one pass. */
static PyObject *count_document(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("count_document", nargs, 4)) {
        return NULL;
    }
    long long article_id = PyLong_AsLongLong(args[3]);
    if (article_id == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof b);
    enum { IDS, FREQUENCY, LAST };
    /* The ids' width first: an article's term ids are int32, other callers' int64. */
    Py_buffer probe;
    if (PyObject_GetBuffer(args[0], &probe, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    Py_ssize_t width = probe.itemsize == 8 ? 8 : 4;
    PyBuffer_Release(&probe);
    if (take(args[0], &b[IDS], width, width == 8 ? "lq" : "il", 0, "ids") < 0
            || take(args[1], &b[FREQUENCY], 4, "il", 1, "frequency") < 0
            || take(args[2], &b[LAST], 8, "lq", 1, "last_article") < 0) {
        release(b, 3);
        return NULL;
    }
    Py_ssize_t count = b[IDS].view.len / width;
    Py_ssize_t frequencies = b[FREQUENCY].view.len / 4, lasts = b[LAST].view.len / 8;
    const int32_t *narrow = b[IDS].view.buf;
    const int64_t *wide = b[IDS].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t id = width == 4 ? narrow[i] : wide[i];
        if (id < 0 || id >= frequencies || id >= lasts) {
            release(b, 3);
            PyErr_Format(PyExc_IndexError, "count_document: id %lld of term %zd is outside "
                         "the statistics (%zd terms)", (long long)id, i,
                         frequencies < lasts ? frequencies : lasts);
            return NULL;
        }
    }
    int32_t *frequency = b[FREQUENCY].view.buf;
    int64_t *last = b[LAST].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        int64_t id = width == 4 ? narrow[i] : wide[i];
        frequency[id] += 1;
        if (last[id] < article_id) {
            last[id] = article_id;
        }
    }
    release(b, 3);
    Py_RETURN_NONE;
}

static const char *tf_idf_weights_doc =
    "tf_idf_weights(ids, counts, frequency, priors, numerator, prior_docs, out) -> int\n\n"
    "``log_tf_idf`` of the terms ``ids`` (int32), their counts (float64) given and their\n"
    "document frequencies (int32) and priors (float64) looked up in the statistics' arrays\n"
    "by id: ``log_tf_idf(counts, frequency[ids], priors[ids], ...)``, the same operations.\n"
    "Returns -1; or, where a count is not positive or a prior is 0 (not learned), the\n"
    "position of the first such term, and ``out`` is then not all written (the caller\n"
    "weighs the article the general way).";

/* ``fingerprint.term_weights`` for an article whose terms all have a count and a learned
 * prior, nearly every one: the two gathers by id, the checks and the weights in one pass,
 * where numpy made a call of each. */
static PyObject *tf_idf_weights(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("tf_idf_weights", nargs, 7)) {
        return NULL;
    }
    double numerator = PyFloat_AsDouble(args[4]);
    double prior_docs = PyFloat_AsDouble(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[5];
    memset(b, 0, sizeof b);
    enum { IDS, COUNTS, FREQUENCY, PRIORS, OUT };
    if (take(args[0], &b[IDS], 4, "il", 0, "ids") < 0
            || take(args[1], &b[COUNTS], 8, "d", 0, "counts") < 0
            || take(args[2], &b[FREQUENCY], 4, "il", 0, "frequency") < 0
            || take(args[3], &b[PRIORS], 8, "d", 0, "priors") < 0
            || take(args[6], &b[OUT], 8, "d", 1, "out") < 0) {
        release(b, 5);
        return NULL;
    }
    Py_ssize_t count = b[IDS].view.len / 4;
    Py_ssize_t terms = b[FREQUENCY].view.len / 4;
    if (b[PRIORS].view.len / 8 < terms) {
        terms = b[PRIORS].view.len / 8;
    }
    if (b[COUNTS].view.len / 8 != count || b[OUT].view.len / 8 != count) {
        release(b, 5);
        PyErr_SetString(PyExc_ValueError,
                        "tf_idf_weights: ids, counts and out differ in length");
        return NULL;
    }
    const int32_t *ids = b[IDS].view.buf;
    const double *counts = b[COUNTS].view.buf;
    const int32_t *frequency = b[FREQUENCY].view.buf;
    const double *priors = b[PRIORS].view.buf;
    double *out = b[OUT].view.buf;
    Py_ssize_t general = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= terms) {
            release(b, 5);
            PyErr_Format(PyExc_IndexError, "tf_idf_weights: id %d of term %zd is outside the "
                         "statistics (%zd terms)", (int)id, i, terms);
            return NULL;
        }
        if (!(counts[i] > 0.0) || priors[id] == 0.0) {
            general = i;
            break;
        }
        if (weigh(counts[i], frequency[id], priors[id], numerator, prior_docs, &out[i]) < 0) {
            release(b, 5);
            PyErr_Format(PyExc_ValueError, "tf_idf_weights: term %zd: its count or its ratio "
                         "is not positive and finite", i);
            return NULL;
        }
    }
    release(b, 5);
    return PyLong_FromSsize_t(general);
}

static const char *known_hashes_doc =
    "known_hashes(numbers, hashes, hashed, out) -> list\n\n"
    "The item hashes (uint32) of the terms numbered ``numbers`` (a sequence of int), written\n"
    "to ``out`` (uint32) where ``hashed`` (bool) marks a term's as known; the positions of\n"
    "those not hashed yet (their places in ``out`` left as they were), for\n"
    "``Vocabulary.hashes_of`` to hash.";

/* ``Vocabulary.hashes_of``: five numpy calls on a salient set's dozen numbers made one
 * pass, which also names the terms to hash (most sets have one or two). */
static PyObject *known_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("known_hashes", nargs, 4)) {
        return NULL;
    }
    PyObject *numbers = PySequence_Fast(args[0], "known_hashes: numbers must be a sequence");
    if (numbers == NULL) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof b);
    enum { HASHES, HASHED, OUT };
    if (take(args[1], &b[HASHES], 4, "IL", 0, "hashes") < 0
            || take(args[2], &b[HASHED], 1, "?bB", 0, "hashed") < 0
            || take(args[3], &b[OUT], 4, "IL", 1, "out") < 0) {
        release(b, 3);
        Py_DECREF(numbers);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(numbers);
    Py_ssize_t terms = b[HASHES].view.len / 4;
    if (b[HASHED].view.len < terms) {
        terms = b[HASHED].view.len;
    }
    PyObject *unknown = NULL;
    if (b[OUT].view.len / 4 != count) {
        PyErr_SetString(PyExc_ValueError, "known_hashes: numbers and out differ in length");
        goto done;
    }
    unknown = PyList_New(0);
    if (unknown == NULL) {
        goto done;
    }
    const uint32_t *hashes = b[HASHES].view.buf;
    const uint8_t *hashed = b[HASHED].view.buf;
    uint32_t *out = b[OUT].view.buf;
    PyObject **items = PySequence_Fast_ITEMS(numbers);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t number = PyLong_AsSsize_t(items[i]);
        if (number == -1 && PyErr_Occurred()) {
            Py_CLEAR(unknown);
            break;
        }
        if (number < 0 || number >= terms) {
            PyErr_Format(PyExc_IndexError, "known_hashes: number %zd of term %zd is outside "
                         "the vocabulary (%zd terms)", number, i, terms);
            Py_CLEAR(unknown);
            break;
        }
        if (hashed[number]) {
            out[i] = hashes[number];
            continue;
        }
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || PyList_Append(unknown, position) < 0) {
            Py_XDECREF(position);
            Py_CLEAR(unknown);
            break;
        }
        Py_DECREF(position);
    }
done:
    release(b, 3);
    Py_DECREF(numbers);
    return unknown;
}

/* What ``strongest``'s sort compares: set for one call, which holds the interpreter lock
 * throughout and compares exact str objects only (no Python code runs meanwhile). */
static const double *strongest_values;
static PyObject *const *strongest_terms;

/* Larger value first; equal values by term, then by position (``sorted`` is stable). */
static int stronger_first(const void *a, const void *b) {
    Py_ssize_t i = *(const Py_ssize_t *)a, j = *(const Py_ssize_t *)b;
    double x = strongest_values[i], y = strongest_values[j];
    if (x != y) {
        return x > y ? -1 : 1;
    }
    int order = PyUnicode_Compare(strongest_terms[i], strongest_terms[j]);
    if (order != 0) {
        return order;
    }
    return (i > j) - (i < j);
}

/* The value that ``np.partition(values, k)[k]`` gives: the k-th smallest (from 0), by
 * Wirth's selection (``values`` is reordered). */
static double kth_smallest(double *values, Py_ssize_t count, Py_ssize_t k) {
    Py_ssize_t low = 0, high = count - 1;
    while (low < high) {
        double pivot = values[k];
        Py_ssize_t i = low, j = high;
        do {
            while (values[i] < pivot) {
                i++;
            }
            while (pivot < values[j]) {
                j--;
            }
            if (i <= j) {
                double swap = values[i];
                values[i] = values[j];
                values[j] = swap;
                i++;
                j--;
            }
        } while (i <= j);
        if (j < k) {
            low = i;
        }
        if (k < i) {
            high = j;
        }
    }
    return values[k];
}

static const char *strongest_doc =
    "strongest(values, terms, limit) -> list\n\n"
    "The positions of the ``limit`` largest ``values`` (float64, no NaN), largest first,\n"
    "equal values in the order of their ``terms`` (a list of str, one per value): what\n"
    "``sorted(range(len(values)), key=lambda i: (-values[i], terms[i]))[:limit]`` gives.";

static PyObject *strongest(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("strongest", nargs, 3)) {
        return NULL;
    }
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "strongest: terms must be a list of str");
        return NULL;
    }
    Buffer b[1];
    memset(b, 0, sizeof b);
    if (take(args[0], &b[0], 8, "d", 0, "values") < 0) {
        release(b, 1);
        return NULL;
    }
    const double *values = b[0].view.buf;
    Py_ssize_t count = b[0].view.len / 8;
    PyObject *const *terms = ((PyListObject *)args[1])->ob_item;
    if (PyList_GET_SIZE(args[1]) != count) {
        release(b, 1);
        PyErr_Format(PyExc_ValueError, "strongest: %zd values but %zd terms", count,
                     PyList_GET_SIZE(args[1]));
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyUnicode_CheckExact(terms[i])) {
            release(b, 1);
            PyErr_Format(PyExc_TypeError, "strongest: term %zd is not a str", i);
            return NULL;
        }
        if (isnan(values[i])) {
            release(b, 1);
            PyErr_Format(PyExc_ValueError, "strongest: value %zd is NaN", i);
            return NULL;
        }
    }
    if (limit < 0) {
        limit = 0;
    }
    double *scratch = PyMem_Malloc(sizeof(double) * (size_t)(count ? count : 1));
    Py_ssize_t *chosen = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    if (scratch == NULL || chosen == NULL) {
        PyMem_Free(scratch);
        PyMem_Free(chosen);
        release(b, 1);
        return PyErr_NoMemory();
    }
    Py_ssize_t contenders = 0;
    if (limit > 0 && limit < count) {
        /* Only the values that can make the cut are sorted. */
        memcpy(scratch, values, sizeof(double) * (size_t)count);
        double cut = kth_smallest(scratch, count, count - limit);
        for (Py_ssize_t i = 0; i < count; i++) {
            if (values[i] >= cut) {
                chosen[contenders++] = i;
            }
        }
    } else if (limit > 0) {
        for (Py_ssize_t i = 0; i < count; i++) {
            chosen[contenders++] = i;
        }
    }
    strongest_values = values;
    strongest_terms = terms;
    qsort(chosen, (size_t)contenders, sizeof(Py_ssize_t), stronger_first);
    strongest_values = NULL;
    strongest_terms = NULL;
    Py_ssize_t taken = contenders < limit ? contenders : limit;
    PyObject *positions = PyList_New(taken);
    for (Py_ssize_t i = 0; positions != NULL && i < taken; i++) {
        PyObject *position = PyLong_FromSsize_t(chosen[i]);
        if (position == NULL) {
            Py_CLEAR(positions);
            break;
        }
        PyList_SET_ITEM(positions, i, position);
    }
    PyMem_Free(scratch);
    PyMem_Free(chosen);
    release(b, 1);
    return positions;
}

/* The band index's recent insertions, in insertion order, chained by key: ``keys`` and
 * ``slots`` hold the entries, ``next`` the entry after each in its bucket's chain (-1 at
 * the end), ``heads`` and ``tails`` the first and the last entry of each bucket (-1 when
 * empty; their length a power of two).  A key is already a mixed hash, so its low bits
 * choose its bucket.  In a dict of lists the same entries cost a probe, a list and two
 * integer objects each, most of them cache misses in a table of thousands of keys. */
static const char *recent_insert_doc =
    "recent_insert(keys, slots, next, heads, tails, count, new_keys, new_slots) -> int\n\n"
    "Append ``new_keys`` (uint32; ``len(new_keys) / len(new_slots)`` keys a slot, slot by\n"
    "slot) with their ``new_slots`` (int32) to the table's first ``count`` entries; returns\n"
    "the new count.";

static PyObject *recent_insert(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("recent_insert", nargs, 8)) {
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[5]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[7];
    memset(b, 0, sizeof b);
    enum { KEYS, SLOTS, NEXT, HEADS, TAILS, NEW_KEYS, NEW_SLOTS };
    if (take(args[0], &b[KEYS], 4, "IL", 1, "keys") < 0
            || take(args[1], &b[SLOTS], 4, "il", 1, "slots") < 0
            || take(args[2], &b[NEXT], 4, "il", 1, "next") < 0
            || take(args[3], &b[HEADS], 4, "il", 1, "heads") < 0
            || take(args[4], &b[TAILS], 4, "il", 1, "tails") < 0
            || take(args[6], &b[NEW_KEYS], 4, "IL", 0, "new_keys") < 0
            || take(args[7], &b[NEW_SLOTS], 4, "il", 0, "new_slots") < 0) {
        release(b, 7);
        return NULL;
    }
    uint32_t *keys = b[KEYS].view.buf;
    int32_t *slots = b[SLOTS].view.buf, *next = b[NEXT].view.buf;
    int32_t *heads = b[HEADS].view.buf, *tails = b[TAILS].view.buf;
    const uint32_t *new_keys = b[NEW_KEYS].view.buf;
    const int32_t *new_slots = b[NEW_SLOTS].view.buf;
    Py_ssize_t capacity = b[KEYS].view.len / 4, buckets = b[HEADS].view.len / 4;
    Py_ssize_t added = b[NEW_KEYS].view.len / 4, slot_count = b[NEW_SLOTS].view.len / 4;
    const char *problem = NULL;
    if (b[SLOTS].view.len / 4 < capacity || b[NEXT].view.len / 4 < capacity) {
        problem = "fewer slots or links than keys";
    } else if (buckets == 0 || (buckets & (buckets - 1)) || b[TAILS].view.len / 4 != buckets) {
        problem = "heads and tails must have one power-of-two length";
    } else if (slot_count == 0 ? added != 0 : added % slot_count != 0) {
        problem = "the new keys are not a whole number for each new slot";
    } else if (count < 0 || count > capacity || added > capacity - count) {
        problem = "the table is full";
    } else if (capacity > INT32_MAX) {
        problem = "more entries than int32 links can reach";
    }
    if (problem != NULL) {
        release(b, 7);
        PyErr_Format(PyExc_ValueError, "recent_insert: %s", problem);
        return NULL;
    }
    Py_ssize_t per_slot = slot_count ? added / slot_count : 0;
    uint32_t mask = (uint32_t)(buckets - 1);
    for (Py_ssize_t i = 0; i < added; i++) {
        int32_t entry = (int32_t)count++;
        uint32_t key = new_keys[i];
        keys[entry] = key;
        slots[entry] = new_slots[i / per_slot];
        next[entry] = -1;
        uint32_t bucket = key & mask;
        if (heads[bucket] < 0) {
            heads[bucket] = entry;
        } else {
            next[tails[bucket]] = entry;
        }
        tails[bucket] = entry;
    }
    release(b, 7);
    return PyLong_FromSsize_t(count);
}

static const char *merge_sorted_doc =
    "merge_sorted(keys, slots, size, new_keys, new_slots) -> None\n\n"
    "Merges the sorted ``new_keys`` (uint32) and their ``new_slots`` (int32) into the first\n"
    "``size`` entries of ``keys`` and ``slots``, sorted, in place: each new key after the\n"
    "equal keys already there, and equal new keys in the order given.  ``keys`` and\n"
    "``slots`` must have room for every new entry after ``size``.  The interpreter lock is\n"
    "released while the entries move (a full window's index holds millions).";

static PyObject *merge_sorted(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("merge_sorted", nargs, 5)) {
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[2]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[4];
    memset(b, 0, sizeof b);
    enum { KEYS, SLOTS, NEW_KEYS, NEW_SLOTS };
    if (take(args[0], &b[KEYS], 4, "IL", 1, "keys") < 0
            || take(args[1], &b[SLOTS], 4, "il", 1, "slots") < 0
            || take(args[3], &b[NEW_KEYS], 4, "IL", 0, "new_keys") < 0
            || take(args[4], &b[NEW_SLOTS], 4, "il", 0, "new_slots") < 0) {
        release(b, 4);
        return NULL;
    }
    Py_ssize_t added = b[NEW_KEYS].view.len / 4;
    if (size < 0 || b[NEW_SLOTS].view.len / 4 != added
            || b[KEYS].view.len / 4 < size + added || b[SLOTS].view.len / 4 < size + added) {
        release(b, 4);
        PyErr_SetString(PyExc_ValueError,
                        "merge_sorted: no room for the new entries, or unequal lengths");
        return NULL;
    }
    uint32_t *keys = b[KEYS].view.buf;
    int32_t *slots = b[SLOTS].view.buf;
    const uint32_t *new_keys = b[NEW_KEYS].view.buf;
    const int32_t *new_slots = b[NEW_SLOTS].view.buf;
    Py_BEGIN_ALLOW_THREADS
    /* From the end down: an old entry only ever moves up, past positions already read. */
    Py_ssize_t old = size - 1, fresh = added - 1, to = size + added - 1;
    while (fresh >= 0) {
        if (old >= 0 && keys[old] > new_keys[fresh]) {
            keys[to] = keys[old];
            slots[to] = slots[old];
            old--;
        } else {
            keys[to] = new_keys[fresh];
            slots[to] = new_slots[fresh];
            fresh--;
        }
        to--;
    }
    Py_END_ALLOW_THREADS
    release(b, 4);
    Py_RETURN_NONE;
}

/* Radix digits of a sort of 32-bit keys: three passes of 11 bits. */
#define DIGIT_BITS 11
#define DIGITS 3
#define DIGIT_VALUES (1 << DIGIT_BITS)

static const char *sort_pairs_doc =
    "sort_pairs(keys, slots, keys_out, slots_out) -> None\n\n"
    "``keys`` (uint32) sorted into ``keys_out``, and ``slots`` (int32) in the same order\n"
    "into ``slots_out``, equal keys in the order given: what a stable sort of the keys\n"
    "gives (``index.sorted_stably``).  A least-significant-digit radix sort, three passes\n"
    "of 11 bits, a pass skipped where every key has the same digit.  The outputs hold\n"
    "exactly as many items as the inputs and overlap neither.  The interpreter lock is\n"
    "released while it sorts (a restart sorts every band key of the window).";

static PyObject *sort_pairs(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("sort_pairs", nargs, 4)) {
        return NULL;
    }
    Buffer b[4];
    memset(b, 0, sizeof b);
    enum { KEYS, SLOTS, KEYS_OUT, SLOTS_OUT };
    if (take(args[0], &b[KEYS], 4, "IL", 0, "keys") < 0
            || take(args[1], &b[SLOTS], 4, "il", 0, "slots") < 0
            || take(args[2], &b[KEYS_OUT], 4, "IL", 1, "keys_out") < 0
            || take(args[3], &b[SLOTS_OUT], 4, "il", 1, "slots_out") < 0) {
        release(b, 4);
        return NULL;
    }
    Py_ssize_t count = b[KEYS].view.len / 4;
    if (b[SLOTS].view.len / 4 != count || b[KEYS_OUT].view.len / 4 != count
            || b[SLOTS_OUT].view.len / 4 != count) {
        release(b, 4);
        PyErr_SetString(PyExc_ValueError, "sort_pairs: arrays of unequal lengths");
        return NULL;
    }
    for (int input = KEYS; input <= SLOTS; input++) {
        for (int output = KEYS_OUT; output <= SLOTS_OUT; output++) {
            const char *in = b[input].view.buf, *out = b[output].view.buf;
            if (count && in < out + 4 * count && out < in + 4 * count) {
                release(b, 4);
                PyErr_SetString(PyExc_ValueError, "sort_pairs: an output overlaps an input");
                return NULL;
            }
        }
    }
    uint32_t *spare_keys = PyMem_Malloc(sizeof(uint32_t) * (size_t)(count ? count : 1));
    int32_t *spare_slots = PyMem_Malloc(sizeof(int32_t) * (size_t)(count ? count : 1));
    Py_ssize_t (*starts)[DIGIT_VALUES] = PyMem_Calloc(DIGITS, sizeof *starts);
    if (spare_keys == NULL || spare_slots == NULL || starts == NULL) {
        PyMem_Free(spare_keys);
        PyMem_Free(spare_slots);
        PyMem_Free(starts);
        release(b, 4);
        return PyErr_NoMemory();
    }
    const uint32_t *keys = b[KEYS].view.buf;
    const int32_t *slots = b[SLOTS].view.buf;
    uint32_t *keys_out = b[KEYS_OUT].view.buf;
    int32_t *slots_out = b[SLOTS_OUT].view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t key = keys[i];
        for (int digit = 0; digit < DIGITS; digit++) {
            starts[digit][(key >> (digit * DIGIT_BITS)) & (DIGIT_VALUES - 1)]++;
        }
    }
    /* Each pass reads from ``from`` and writes to whichever buffer ``from`` is not (the
     * inputs are only read): the output, or the spare. */
    const uint32_t *from_keys = keys;
    const int32_t *from_slots = slots;
    for (int digit = 0; digit < DIGITS; digit++) {
        Py_ssize_t *start = starts[digit];
        unsigned int at_bit = (unsigned int)(digit * DIGIT_BITS);
        if (count == 0 || start[(from_keys[0] >> at_bit) & (DIGIT_VALUES - 1)] == count) {
            continue;  /* one digit for every key: the order stays */
        }
        Py_ssize_t total = 0;
        for (int value = 0; value < DIGIT_VALUES; value++) {
            Py_ssize_t here = start[value];
            start[value] = total;
            total += here;
        }
        uint32_t *to_keys = from_keys == keys_out ? spare_keys : keys_out;
        int32_t *to_slots = from_keys == keys_out ? spare_slots : slots_out;
        for (Py_ssize_t i = 0; i < count; i++) {
            uint32_t key = from_keys[i];
            Py_ssize_t at = start[(key >> at_bit) & (DIGIT_VALUES - 1)]++;
            to_keys[at] = key;
            to_slots[at] = from_slots[i];
        }
        from_keys = to_keys;
        from_slots = to_slots;
    }
    if (count && from_keys != keys_out) {
        memcpy(keys_out, from_keys, sizeof(uint32_t) * (size_t)count);
        memcpy(slots_out, from_slots, sizeof(int32_t) * (size_t)count);
    }
    Py_END_ALLOW_THREADS
    PyMem_Free(spare_keys);
    PyMem_Free(spare_slots);
    PyMem_Free(starts);
    release(b, 4);
    Py_RETURN_NONE;
}

static const char *split_by_part_doc =
    "split_by_part(keys, slots, bits) -> list\n\n"
    "``keys`` (uint32) and their ``slots`` (int32) split into ``2 ** bits`` parts by the\n"
    "keys' top ``bits`` bits (1 to 8), each part in the order given: one (keys, slots) pair\n"
    "of ``bytes`` a part, the part of the smallest keys first (a restart's chunk of band\n"
    "keys, each part sorted later with the same part of the other chunks;\n"
    "``index.split_by_part``).";

static PyObject *split_by_part(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("split_by_part", nargs, 3)) {
        return NULL;
    }
    long bits = PyLong_AsLong(args[2]);
    if (bits == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (bits < 1 || bits > 8) {
        PyErr_Format(PyExc_ValueError, "split_by_part: %ld bits, not 1 to 8", bits);
        return NULL;
    }
    Buffer b[2];
    memset(b, 0, sizeof b);
    if (take(args[0], &b[0], 4, "IL", 0, "keys") < 0
            || take(args[1], &b[1], 4, "il", 0, "slots") < 0) {
        release(b, 2);
        return NULL;
    }
    Py_ssize_t count = b[0].view.len / 4;
    if (b[1].view.len / 4 != count) {
        release(b, 2);
        PyErr_SetString(PyExc_ValueError, "split_by_part: arrays of unequal lengths");
        return NULL;
    }
    const uint32_t *keys = b[0].view.buf;
    const int32_t *slots = b[1].view.buf;
    int parts = 1 << bits;
    unsigned int shift = (unsigned int)(32 - bits);
    Py_ssize_t sizes[256] = {0};
    for (Py_ssize_t i = 0; i < count; i++) {
        sizes[keys[i] >> shift]++;
    }
    PyObject *result = PyList_New(parts);
    uint32_t *part_keys[256];
    int32_t *part_slots[256];
    if (result == NULL) {
        release(b, 2);
        return NULL;
    }
    for (int part = 0; part < parts; part++) {
        PyObject *key_bytes = PyBytes_FromStringAndSize(NULL, 4 * sizes[part]);
        PyObject *slot_bytes = PyBytes_FromStringAndSize(NULL, 4 * sizes[part]);
        PyObject *pair = (key_bytes && slot_bytes) ? PyTuple_Pack(2, key_bytes, slot_bytes)
                                                   : NULL;
        Py_XDECREF(key_bytes);
        Py_XDECREF(slot_bytes);
        if (pair == NULL) {
            Py_DECREF(result);
            release(b, 2);
            return NULL;
        }
        part_keys[part] = (uint32_t *)PyBytes_AS_STRING(key_bytes);
        part_slots[part] = (int32_t *)PyBytes_AS_STRING(slot_bytes);
        PyList_SET_ITEM(result, part, pair);
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t part = keys[i] >> shift;
        *part_keys[part]++ = keys[i];
        *part_slots[part]++ = slots[i];
    }
    release(b, 2);
    return result;
}

static const char *recent_matches_doc =
    "recent_matches(keys, slots, next, heads, wanted) -> bytes\n\n"
    "The slots of the table's entries whose key equals one of ``wanted`` (uint32): for each\n"
    "wanted key in turn, its entries in the order they were inserted; as int32 values in a\n"
    "bytes object.";

static PyObject *recent_matches(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("recent_matches", nargs, 5)) {
        return NULL;
    }
    Buffer b[5];
    memset(b, 0, sizeof b);
    enum { KEYS, SLOTS, NEXT, HEADS, WANTED };
    if (take(args[0], &b[KEYS], 4, "IL", 0, "keys") < 0
            || take(args[1], &b[SLOTS], 4, "il", 0, "slots") < 0
            || take(args[2], &b[NEXT], 4, "il", 0, "next") < 0
            || take(args[3], &b[HEADS], 4, "il", 0, "heads") < 0
            || take(args[4], &b[WANTED], 4, "IL", 0, "wanted") < 0) {
        release(b, 5);
        return NULL;
    }
    const uint32_t *keys = b[KEYS].view.buf, *wanted = b[WANTED].view.buf;
    const int32_t *slots = b[SLOTS].view.buf, *next = b[NEXT].view.buf;
    const int32_t *heads = b[HEADS].view.buf;
    Py_ssize_t capacity = b[KEYS].view.len / 4, buckets = b[HEADS].view.len / 4;
    Py_ssize_t count = b[WANTED].view.len / 4;
    if (b[SLOTS].view.len / 4 < capacity || b[NEXT].view.len / 4 < capacity
            || buckets == 0 || (buckets & (buckets - 1))) {
        release(b, 5);
        PyErr_SetString(PyExc_ValueError, "recent_matches: not a table recent_insert made");
        return NULL;
    }
    uint32_t mask = (uint32_t)(buckets - 1);
    /* Counted first, then copied: the chains are short. */
    Py_ssize_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        PyObject *found = NULL;
        int32_t *out = NULL;
        if (pass == 1) {
            found = PyBytes_FromStringAndSize(NULL, total * 4);
            if (found == NULL) {
                release(b, 5);
                return NULL;
            }
            out = (int32_t *)PyBytes_AS_STRING(found);
        }
        for (Py_ssize_t k = 0; k < count; k++) {
            Py_ssize_t steps = 0;
            for (int32_t entry = heads[wanted[k] & mask]; entry >= 0; entry = next[entry]) {
                if (entry >= capacity || ++steps > capacity) {
                    Py_XDECREF(found);
                    release(b, 5);
                    PyErr_SetString(PyExc_ValueError, "recent_matches: a chain that leaves the table");
                    return NULL;
                }
                if (keys[entry] == wanted[k]) {
                    if (pass == 0) {
                        total++;
                    } else {
                        *out++ = slots[entry];
                    }
                }
            }
        }
        if (pass == 1) {
            release(b, 5);
            return found;
        }
    }
    return NULL; /* not reached */
}

/* SHA-1 (FIPS 180-4), enough of it to hash short items: datasketch's MinHash hashes each
 * item with it (the first four bytes of the digest), so the shingles must be hashed with
 * it too for the signatures to be datasketch's. */
typedef void (*Sha1Compress)(uint32_t state[5], const uint8_t block[64]);

typedef struct {
    Sha1Compress compress;
    uint32_t state[5];
    uint64_t length;
    uint8_t block[64];
    size_t used;
} Sha1;

#define ROTATE_LEFT(value, bits) (((value) << (bits)) | ((value) >> (32 - (bits))))

static void sha1_compress(uint32_t state[5], const uint8_t block[64]) {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) {
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16
               | (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
    }
    for (int i = 16; i < 80; i++) {
        w[i] = ROTATE_LEFT(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
#define SHA1_ROUND(f, k, i)                                       \
    do {                                                          \
        uint32_t next = ROTATE_LEFT(a, 5) + (f) + e + (k) + w[i]; \
        e = d;                                                    \
        d = c;                                                    \
        c = ROTATE_LEFT(b, 30);                                   \
        b = a;                                                    \
        a = next;                                                 \
    } while (0)
    for (int i = 0; i < 20; i++) {
        SHA1_ROUND((b & c) | (~b & d), 0x5A827999u, i);
    }
    for (int i = 20; i < 40; i++) {
        SHA1_ROUND(b ^ c ^ d, 0x6ED9EBA1u, i);
    }
    for (int i = 40; i < 60; i++) {
        SHA1_ROUND((b & c) | (b & d) | (c & d), 0x8F1BBCDCu, i);
    }
    for (int i = 60; i < 80; i++) {
        SHA1_ROUND(b ^ c ^ d, 0xCA62C1D6u, i);
    }
#undef SHA1_ROUND
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
}

#ifdef HAVE_SHA_INSTRUCTIONS
/* The same compression with the CPU's SHA instructions (x86's SHA extensions), four rounds
 * an instruction: about a fifth of the time of the portable one here. */
__attribute__((target("sha,ssse3,sse4.1")))
static void sha1_compress_instructions(uint32_t state[5], const uint8_t block[64]) {
    /* Each message word big-endian, the first in the highest lane, as the instructions
     * take them. */
    const __m128i reverse = _mm_set_epi64x(0x0001020304050607LL, 0x08090A0B0C0D0E0FLL);
    __m128i words[20];
    for (int i = 0; i < 4; i++) {
        words[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(block + 16 * i)),
                                    reverse);
    }
    for (int i = 4; i < 20; i++) {
        words[i] = _mm_sha1msg2_epu32(
            _mm_xor_si128(_mm_sha1msg1_epu32(words[i - 4], words[i - 3]), words[i - 2]),
            words[i - 1]);
    }
    __m128i abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)state), 0x1B);
    __m128i first_e = _mm_set_epi32((int)state[4], 0, 0, 0);
    __m128i start = abcd;
    __m128i before = abcd;
    abcd = _mm_sha1rnds4_epu32(abcd, _mm_add_epi32(first_e, words[0]), 0);
#define SHA1_FOUR_ROUNDS(group, function)                                   \
    do {                                                                    \
        __m128i e = _mm_sha1nexte_epu32(before, words[group]);              \
        before = abcd;                                                      \
        abcd = _mm_sha1rnds4_epu32(abcd, e, function);                      \
    } while (0)
    /* The function (the immediate operand) changes every twenty rounds. */
    for (int group = 1; group < 5; group++) SHA1_FOUR_ROUNDS(group, 0);
    for (int group = 5; group < 10; group++) SHA1_FOUR_ROUNDS(group, 1);
    for (int group = 10; group < 15; group++) SHA1_FOUR_ROUNDS(group, 2);
    for (int group = 15; group < 20; group++) SHA1_FOUR_ROUNDS(group, 3);
#undef SHA1_FOUR_ROUNDS
    __m128i e = _mm_sha1nexte_epu32(before, first_e);
    abcd = _mm_shuffle_epi32(_mm_add_epi32(abcd, start), 0x1B);
    _mm_storeu_si128((__m128i *)state, abcd);
    state[4] = (uint32_t)_mm_extract_epi32(e, 3);
}

static int cpu_has_sha_instructions(void) {
    unsigned int eax, ebx, ecx, edx;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
        return 0;
    }
    int ssse3 = (ecx >> 9) & 1, sse41 = (ecx >> 19) & 1;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
        return 0;
    }
    return ssse3 && sse41 && ((ebx >> 29) & 1);
}
#endif

/* The compression in use: the CPU's instructions where it has them (set at import). */
static Sha1Compress sha1_compress_fastest = sha1_compress;

static void sha1_start(Sha1 *sha, Sha1Compress compress) {
    static const uint32_t initial[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476,
                                        0xC3D2E1F0};
    sha->compress = compress;
    memcpy(sha->state, initial, sizeof initial);
    sha->length = 0;
    sha->used = 0;
}

static void sha1_add(Sha1 *sha, const uint8_t *data, size_t size) {
    sha->length += size;
    while (size > 0) {
        size_t room = 64 - sha->used, taken = size < room ? size : room;
        memcpy(sha->block + sha->used, data, taken);
        sha->used += taken;
        data += taken;
        size -= taken;
        if (sha->used == 64) {
            sha->compress(sha->state, sha->block);
            sha->used = 0;
        }
    }
}

/* The first four bytes of the digest, read little-endian (as datasketch reads them). */
static uint32_t sha1_first_word(Sha1 *sha) {
    uint64_t bits = sha->length * 8;
    sha->block[sha->used++] = 0x80;
    if (sha->used > 56) {
        memset(sha->block + sha->used, 0, 64 - sha->used);
        sha->compress(sha->state, sha->block);
        sha->used = 0;
    }
    memset(sha->block + sha->used, 0, 56 - sha->used);
    for (int i = 0; i < 8; i++) {
        sha->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    }
    sha->compress(sha->state, sha->block);
    uint32_t first = sha->state[0];
    /* The digest is big-endian: its first byte is the top byte of state[0]. */
    return (first >> 24) | (first >> 8 & 0xFF00) | (first << 8 & 0xFF0000) | (first << 24);
}

/* MurmurHash3's finalizer, which datasketch's affine32 scheme applies to each item hash. */
static uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6B;
    h ^= h >> 13;
    h *= 0xC2B2AE35;
    h ^= h >> 16;
    return h;
}

static const char *shingle_hashes_doc =
    "shingle_hashes(tokens, size[, portable]) -> bytes\n\n"
    "The MinHash item hash (``fingerprint.item_hashes``: SHA-1's first four bytes,\n"
    "little-endian, through the affine32 finalizer) of each run of ``size`` consecutive\n"
    "tokens (a list of str) joined by single spaces and encoded as UTF-8, in order, as\n"
    "native uint32 values; one hash of all the tokens joined when there are fewer than\n"
    "``size``, none when there are none.  Repeated runs are hashed each time they occur.\n"
    "SHA-1 is computed with the CPU's SHA instructions where it has them\n"
    "(``SHA_INSTRUCTIONS``), else portably; ``portable`` true: portably in any case (the\n"
    "tests compare the two).";

/* ``fingerprint.shingle_hashes_python`` in one pass: it made a string, a bytes object, a
 * hash object and a digest for every shingle of an article (a third of the time that a
 * worker spends preparing an article). */
static PyObject *shingle_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 && nargs != 3) {
        PyErr_Format(PyExc_TypeError, "shingle_hashes takes 2 or 3 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    Sha1Compress compress = sha1_compress_fastest;
    if (nargs == 3) {
        int portable = PyObject_IsTrue(args[2]);
        if (portable < 0) {
            return NULL;
        }
        if (portable) {
            compress = sha1_compress;
        }
    }
    if (!PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "shingle_hashes: tokens must be a list of str");
        return NULL;
    }
    Py_ssize_t size = PyLong_AsSsize_t(args[1]);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "shingle_hashes: size must be at least 1");
        return NULL;
    }
    PyObject *tokens = args[0];
    Py_ssize_t count = PyList_GET_SIZE(tokens);
    Py_ssize_t runs = count == 0 ? 0 : (count < size ? 1 : count - size + 1);
    Py_ssize_t width = count < size ? count : size;
    const char **text = PyMem_Malloc(sizeof(char *) * (size_t)(count ? count : 1));
    Py_ssize_t *length = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(count ? count : 1));
    PyObject *hashes = PyBytes_FromStringAndSize(NULL, runs * (Py_ssize_t)sizeof(uint32_t));
    if (text == NULL || length == NULL || hashes == NULL) {
        PyMem_Free(text);
        PyMem_Free(length);
        Py_XDECREF(hashes);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *token = PyList_GET_ITEM(tokens, i);
        if (!PyUnicode_Check(token)) {
            PyErr_Format(PyExc_TypeError, "shingle_hashes: token %zd is not a str", i);
            text[i] = NULL;
        } else {
            /* Borrowed: the str keeps its UTF-8 form (ASCII text is its own). */
            text[i] = PyUnicode_AsUTF8AndSize(token, &length[i]);
        }
        if (text[i] == NULL) {
            PyMem_Free(text);
            PyMem_Free(length);
            Py_DECREF(hashes);
            return NULL;
        }
    }
    uint32_t *out = (uint32_t *)PyBytes_AS_STRING(hashes);
    static const uint8_t space = ' ';
    for (Py_ssize_t run = 0; run < runs; run++) {
        Sha1 sha;
        sha1_start(&sha, compress);
        for (Py_ssize_t j = run; j < run + width; j++) {
            if (j > run) {
                sha1_add(&sha, &space, 1);
            }
            sha1_add(&sha, (const uint8_t *)text[j], (size_t)length[j]);
        }
        out[run] = fmix32(sha1_first_word(&sha));
    }
    PyMem_Free(text);
    PyMem_Free(length);
    return hashes;
}

/* The vocabulary's table of term numbers (``fingerprint.TermTable``): open addressing with
 * linear probing over slots of two uint64 values, a term's key (the first half of its
 * 128-bit key, and the top 32 bits of the second) and its number (the low 32 bits of the
 * second value; 0: an empty slot, number 0 being the padding, never a term's).  A slot's
 * home is the key's first half modulo the slots, a power of two. */

#define SLOT_NUMBER(slot) ((slot)[1] & 0xFFFFFFFFULL)
#define KEY_TOP 0xFFFFFFFF00000000ULL

static inline uint64_t rotl64(uint64_t x, int r) {
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xFF51AFD7ED558CCDULL;
    k ^= k >> 33;
    k *= 0xC4CEB9FE1A85EC53ULL;
    k ^= k >> 33;
    return k;
}

/* MurmurHash3_x64_128 of ``data[0..size)``, its two halves started from the two halves of
 * a 128-bit ``seed`` instead of one 32-bit seed. */
static void term_key(const uint8_t *data, size_t size, const uint64_t seed[2],
                     uint64_t key[2]) {
    const uint64_t c1 = 0x87C37B91114253D5ULL, c2 = 0x4CF5AD432745937FULL;
    uint64_t h1 = seed[0], h2 = seed[1];
    size_t blocks = size / 16;
    for (size_t i = 0; i < blocks; i++) {
        uint64_t k1, k2;
        memcpy(&k1, data + 16 * i, 8);
        memcpy(&k2, data + 16 * i + 8, 8);
        k1 *= c1;
        k1 = rotl64(k1, 31);
        k1 *= c2;
        h1 ^= k1;
        h1 = rotl64(h1, 27);
        h1 += h2;
        h1 = h1 * 5 + 0x52DCE729;
        k2 *= c2;
        k2 = rotl64(k2, 33);
        k2 *= c1;
        h2 ^= k2;
        h2 = rotl64(h2, 31);
        h2 += h1;
        h2 = h2 * 5 + 0x38495AB5;
    }
    const uint8_t *tail = data + 16 * blocks;
    size_t rest = size & 15;
    uint64_t k1 = 0, k2 = 0;
    if (rest > 8) {
        memcpy(&k2, tail + 8, rest - 8);
        k2 *= c2;
        k2 = rotl64(k2, 33);
        k2 *= c1;
        h2 ^= k2;
    }
    if (rest > 0) {
        memcpy(&k1, tail, rest > 8 ? 8 : rest);
        k1 *= c1;
        k1 = rotl64(k1, 31);
        k1 *= c2;
        h1 ^= k1;
    }
    h1 ^= (uint64_t)size;
    h2 ^= (uint64_t)size;
    h1 += h2;
    h2 += h1;
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 += h2;
    h2 += h1;
    key[0] = h1;
    key[1] = h2;
}

/* The slot holding ``key``, or the empty slot where it would go; -1 when the table is full
 * and lacks it. */
static inline Py_ssize_t term_slot(const uint64_t *slots, uint64_t mask, const uint64_t key[2]) {
    uint64_t at = key[0] & mask;
    for (uint64_t probes = 0; probes <= mask; probes++) {
        const uint64_t *slot = slots + 2 * at;
        if (SLOT_NUMBER(slot) == 0
                || (slot[0] == key[0] && (slot[1] & KEY_TOP) == (key[1] & KEY_TOP))) {
            return (Py_ssize_t)at;
        }
        at = (at + 1) & mask;
    }
    return -1;
}

/* The terms of ``text`` (separated by single spaces; none in an empty string) as a UTF-8
 * buffer, and the seed as two halves; 0 or -1 with an exception set. */
static int term_text(PyObject *text, PyObject *seed, const char **data, Py_ssize_t *size,
                     uint64_t halves[2]) {
    if (!PyUnicode_Check(text)) {
        PyErr_SetString(PyExc_TypeError, "terms must be a str");
        return -1;
    }
    *data = PyUnicode_AsUTF8AndSize(text, size);
    if (*data == NULL) {
        return -1;
    }
    PyObject *mask = PyLong_FromUnsignedLongLong(0xFFFFFFFFFFFFFFFFULL);
    PyObject *low = mask == NULL ? NULL : PyNumber_And(seed, mask);
    PyObject *shift = low == NULL ? NULL : PyLong_FromLong(64);
    PyObject *shifted = shift == NULL ? NULL : PyNumber_Rshift(seed, shift);
    PyObject *high = shifted == NULL ? NULL : PyNumber_And(shifted, mask);
    int failed = high == NULL;
    if (!failed) {
        halves[0] = PyLong_AsUnsignedLongLong(low);
        halves[1] = PyLong_AsUnsignedLongLong(high);
        failed = PyErr_Occurred() != NULL;
    }
    Py_XDECREF(mask);
    Py_XDECREF(low);
    Py_XDECREF(shift);
    Py_XDECREF(shifted);
    Py_XDECREF(high);
    return failed ? -1 : 0;
}

/* The key of each term of ``data[0..size)`` (separated by single spaces; none when empty)
 * into ``keys`` (two values a term, room for ``room`` terms), each term's home slot in
 * ``slots`` fetched as its key is known unless ``slots`` is NULL; how many terms, or -1
 * when there are more than ``room``. */
static Py_ssize_t keys_of_terms(const char *data, Py_ssize_t size, const uint64_t seed[2],
                                uint64_t *keys, Py_ssize_t room, const uint64_t *slots,
                                uint64_t mask) {
    Py_ssize_t term = 0, start = 0;
    while (size > 0 && start <= size) {
        const char *space = memchr(data + start, ' ', (size_t)(size - start));
        Py_ssize_t end = space == NULL ? size : space - data;
        if (term == room) {
            return -1;
        }
        uint64_t *key = keys + 2 * term;
        term_key((const uint8_t *)data + start, (size_t)(end - start), seed, key);
#if defined(__GNUC__)
        if (slots != NULL) {
            __builtin_prefetch(slots + 2 * (key[0] & mask));
        }
#else
        (void)slots;
        (void)mask;
#endif
        term++;
        start = end + 1;
    }
    return term;
}

static const char *term_numbers_doc =
    "term_numbers(terms, seed, slots, numbers, keys) -> int\n\n"
    "The 128-bit key under ``seed`` (an int: its low 128 bits) of each term of\n"
    "``terms`` (a str, the terms separated by single spaces; an empty str has none), written\n"
    "to ``keys`` (uint64, two a term), and the number the table ``slots`` (uint64, two a\n"
    "slot: the key's first half, then the top 32 bits of its second above the number, 0\n"
    "where empty; as many slots as a power of two) holds for it, written to ``numbers``\n"
    "(int32; -1 for a term it lacks).\n"
    "``numbers`` must have one place a term.  Returns how many terms the table lacks.";

static PyObject *term_numbers(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("term_numbers", nargs, 5)) {
        return NULL;
    }
    const char *data;
    Py_ssize_t size;
    uint64_t seed[2];
    if (term_text(args[0], args[1], &data, &size, seed) < 0) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof b);
    enum { SLOTS, NUMBERS, KEYS };
    if (take(args[2], &b[SLOTS], 8, "LQkm", 0, "slots") < 0
            || take(args[3], &b[NUMBERS], 4, "i", 1, "numbers") < 0
            || take(args[4], &b[KEYS], 8, "LQkm", 1, "keys") < 0) {
        release(b, 3);
        return NULL;
    }
    const uint64_t *slots = b[SLOTS].view.buf;
    int32_t *numbers = b[NUMBERS].view.buf;
    uint64_t *keys = b[KEYS].view.buf;
    Py_ssize_t capacity = b[SLOTS].view.len / 16;
    Py_ssize_t count = b[NUMBERS].view.len / 4;
    if (capacity == 0 || (capacity & (capacity - 1)) != 0 || b[SLOTS].view.len % 16 != 0
            || b[KEYS].view.len / 16 < count) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "term_numbers: slots must be two values for each "
                        "of a power of two slots, and keys two values a number");
        return NULL;
    }
    uint64_t mask = (uint64_t)capacity - 1;
    /* Every key first, each home slot fetched as it is known: the table is megabytes, so
     * most look-ups miss the cache, and this way the misses overlap. */
    Py_ssize_t terms = keys_of_terms(data, size, seed, keys, count, slots, mask);
    if (terms != count) {
        release(b, 3);
        if (terms < 0) {
            PyErr_Format(PyExc_ValueError, "term_numbers: more terms than the %zd numbers",
                         count);
        } else {
            PyErr_Format(PyExc_ValueError, "term_numbers: %zd terms for %zd numbers", terms,
                         count);
        }
        return NULL;
    }
    Py_ssize_t absent = 0;
    for (Py_ssize_t term = 0; term < count; term++) {
        Py_ssize_t at = term_slot(slots, mask, keys + 2 * term);
        if (at < 0 || SLOT_NUMBER(slots + 2 * at) == 0) {
            numbers[term] = -1;
            absent++;
        } else {
            numbers[term] = (int32_t)SLOT_NUMBER(slots + 2 * at);
        }
    }
    release(b, 3);
    return PyLong_FromSsize_t(absent);
}

static const char *term_keys_doc =
    "term_keys(terms, seed, keys) -> int\n\n"
    "``term_numbers``'s keys alone: written to ``keys`` (uint64, two a term), and how many\n"
    "terms there were.";

static PyObject *term_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("term_keys", nargs, 3)) {
        return NULL;
    }
    const char *data;
    Py_ssize_t size;
    uint64_t seed[2];
    if (term_text(args[0], args[1], &data, &size, seed) < 0) {
        return NULL;
    }
    Buffer keys_buffer;
    memset(&keys_buffer, 0, sizeof keys_buffer);
    if (take(args[2], &keys_buffer, 8, "LQkm", 1, "keys") < 0) {
        release(&keys_buffer, 1);
        return NULL;
    }
    Py_ssize_t room = keys_buffer.view.len / 16;
    Py_ssize_t terms = keys_of_terms(data, size, seed, keys_buffer.view.buf, room, NULL, 0);
    release(&keys_buffer, 1);
    if (terms < 0) {
        PyErr_Format(PyExc_ValueError, "term_keys: more terms than room for %zd keys", room);
        return NULL;
    }
    return PyLong_FromSsize_t(terms);
}

/* The arguments of ``table_insert`` (``with_numbers``) or ``table_remove``: the table
 * ``slots`` (a power of two of them, as ``term_numbers`` has it), ``keys`` (two values a
 * key, ``count`` keys) and their numbers; 0, or -1 with an exception set. */
static int term_table(PyObject *const *args, Py_ssize_t nargs, Buffer *b, const char *function,
                      int with_numbers, Py_ssize_t *capacity, Py_ssize_t *count) {
    memset(b, 0, 3 * sizeof *b);
    if (!arguments_given(function, nargs, with_numbers ? 3 : 2)) {
        return -1;
    }
    if (take(args[0], &b[0], 8, "LQkm", 1, "slots") < 0
            || take(args[1], &b[1], 8, "LQkm", 0, "keys") < 0
            || (with_numbers && take(args[2], &b[2], 4, "i", 0, "numbers") < 0)) {
        return -1;
    }
    *capacity = b[0].view.len / 16;
    *count = b[1].view.len / 16;
    if (*capacity == 0 || (*capacity & (*capacity - 1)) != 0 || b[0].view.len % 16 != 0
            || b[1].view.len % 16 != 0 || (with_numbers && b[2].view.len / 4 != *count)) {
        PyErr_Format(PyExc_ValueError, "%s: slots must be two values for each of a power "
                     "of two slots, keys two values a key, and one number a key", function);
        return -1;
    }
    return 0;
}

static const char *table_insert_doc =
    "table_insert(slots, keys, numbers) -> None\n\n"
    "Puts each key of ``keys`` (uint64, two a key) in the table ``slots`` with its number\n"
    "(``numbers``, int32, above 0), in place of the number a key already there had; a\n"
    "ValueError when the table is full.";

static PyObject *table_insert(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Buffer b[3];
    Py_ssize_t capacity, count;
    if (term_table(args, nargs, b, "table_insert", 1, &capacity, &count) < 0) {
        release(b, 3);
        return NULL;
    }
    uint64_t *slots = b[0].view.buf;
    const uint64_t *keys = b[1].view.buf;
    const int32_t *numbers = b[2].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (numbers[i] <= 0) {
            release(b, 3);
            PyErr_Format(PyExc_ValueError, "table_insert: number %d is not above 0",
                         (int)numbers[i]);
            return NULL;
        }
    }
    uint64_t mask = (uint64_t)capacity - 1;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = term_slot(slots, mask, keys + 2 * i);
        if (at < 0) {
            release(b, 3);
            PyErr_SetString(PyExc_ValueError, "table_insert: the table is full");
            return NULL;
        }
        uint64_t *slot = slots + 2 * at;
        slot[0] = keys[2 * i];
        slot[1] = (keys[2 * i + 1] & KEY_TOP) | (uint64_t)(uint32_t)numbers[i];
    }
    release(b, 3);
    Py_RETURN_NONE;
}

static const char *table_remove_doc =
    "table_remove(slots, keys) -> int\n\n"
    "Takes each key of ``keys`` (uint64, two a key) out of the table ``slots``, moving back\n"
    "the keys that probed past it, so that every key left is found; returns how many keys\n"
    "were there.";

static PyObject *table_remove(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    Buffer b[3];
    Py_ssize_t capacity, count;
    if (term_table(args, nargs, b, "table_remove", 0, &capacity, &count) < 0) {
        release(b, 3);
        return NULL;
    }
    uint64_t *slots = b[0].view.buf;
    const uint64_t *keys = b[1].view.buf;
    uint64_t mask = (uint64_t)capacity - 1;
    Py_ssize_t removed = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t found = term_slot(slots, mask, keys + 2 * i);
        if (found < 0 || SLOT_NUMBER(slots + 2 * found) == 0) {
            continue;
        }
        uint64_t hole = (uint64_t)found;
        removed++;
        /* Backward shift: a later key of the run whose home is not between the hole and
         * itself (cyclically) fills the hole, which moves to where that key was. */
        for (uint64_t at = (hole + 1) & mask; SLOT_NUMBER(slots + 2 * at) != 0;
             at = (at + 1) & mask) {
            uint64_t home = slots[2 * at] & mask;
            if (((at - home) & mask) >= ((at - hole) & mask)) {
                memcpy(slots + 2 * hole, slots + 2 * at, 2 * sizeof(uint64_t));
                hole = at;
            }
        }
        memset(slots + 2 * hole, 0, 2 * sizeof(uint64_t));
    }
    release(b, 3);
    return PyLong_FromSsize_t(removed);
}

static const char *band_keys_doc =
    "band_keys(signatures, rows, band_ids, out)\n\n"
    "``BandIndex.band_keys`` of the signature matrix ``signatures`` (uint32, one row each):\n"
    "for each band of ``rows`` values, the values folded by SplitMix64's finaliser, the\n"
    "band's id (``band_ids``, uint64) mixed in, and the top 32 bits of the result into\n"
    "``out`` (uint32, a row of ``len(band_ids)`` keys a signature), the same operations on\n"
    "64-bit values as numpy's.";

static inline uint64_t splitmix(uint64_t value) {
    value ^= value >> 30;
    value *= 0xBF58476D1CE4E5B9ULL;
    value ^= value >> 27;
    value *= 0x94D049BB133111EBULL;
    return value ^ (value >> 31);
}

/* A window's band keys at a start-up (two indexes, 32 bands of 100,000 signatures), in
 * one pass over the signatures where numpy made a 64-bit temporary of every step; and an
 * article's, without numpy's dozen calls for one row. */
static PyObject *band_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("band_keys", nargs, 4)) {
        return NULL;
    }
    Py_ssize_t rows = PyLong_AsSsize_t(args[1]);
    if (rows == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer b[3];
    memset(b, 0, sizeof b);
    enum { SIGNATURES, BAND_IDS, OUT };
    if (take(args[0], &b[SIGNATURES], 4, "IL", 0, "signatures") < 0
            || take(args[2], &b[BAND_IDS], 8, "LkQ", 0, "band_ids") < 0
            || take(args[3], &b[OUT], 4, "IL", 1, "out") < 0) {
        release(b, 3);
        return NULL;
    }
    Py_ssize_t bands = b[BAND_IDS].view.len / 8;
    if (b[SIGNATURES].view.ndim != 2 || b[OUT].view.ndim != 2
            || b[OUT].view.shape[0] != b[SIGNATURES].view.shape[0]
            || b[OUT].view.shape[1] != bands || rows < 1
            || bands * rows > b[SIGNATURES].view.shape[1]) {
        release(b, 3);
        PyErr_SetString(PyExc_ValueError, "band_keys: out must hold a key a band for each "
                        "signature, and the bands' values fit in a signature");
        return NULL;
    }
    Py_ssize_t count = b[SIGNATURES].view.shape[0], width = b[SIGNATURES].view.shape[1];
    const uint32_t *signatures = b[SIGNATURES].view.buf;
    const uint64_t *band_ids = b[BAND_IDS].view.buf;
    uint32_t *out = b[OUT].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        const uint32_t *values = signatures + i * width;
        for (Py_ssize_t band = 0; band < bands; band++) {
            const uint32_t *own = values + band * rows;
            uint64_t folded = own[0];
            for (Py_ssize_t column = 1; column < rows; column++) {
                folded = splitmix((folded * 0x100000001B3ULL) ^ own[column]);
            }
            out[i * bands + band] = (uint32_t)(splitmix(folded ^ band_ids[band]) >> 32);
        }
    }
    release(b, 3);
    Py_RETURN_NONE;
}

static const char *unpack_vectors_doc =
    "unpack_vectors(stored, ids, weights) -> int\n\n"
    "Stored term vectors (a list of bytes: n little-endian int32 term ids, then n\n"
    "little-endian float64 weights) into the rows of ``ids`` (int32) and ``weights``\n"
    "(float64), both of ``len(stored)`` rows of one width and zeroed by the caller: row i\n"
    "takes vector i, the rest of the row left as it is.  Returns -1; or the position of\n"
    "the first item that is not bytes, whose length is not a multiple of 12, or that is\n"
    "wider than a row, and then nothing is written.  A little-endian host's layout.";

/* ``store.unpack_vectors`` at a start-up: a window's vectors (100,000 of 60 terms) into
 * the clusterer's padded matrices, one copy each, where numpy sliced, joined and
 * scattered them (0.23 s of a 1.7 s restart). */
static PyObject *unpack_vectors(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("unpack_vectors", nargs, 3)) {
        return NULL;
    }
    PyObject *stored = PySequence_Fast(args[0], "unpack_vectors: stored must be a sequence");
    if (stored == NULL) {
        return NULL;
    }
    Buffer b[2];
    memset(b, 0, sizeof b);
    enum { IDS, WEIGHTS };
    if (take(args[1], &b[IDS], 4, "il", 1, "ids") < 0
            || take(args[2], &b[WEIGHTS], 8, "d", 1, "weights") < 0) {
        release(b, 2);
        Py_DECREF(stored);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(stored);
    PyObject *result = NULL;
    Py_ssize_t id_values = b[IDS].view.len / 4, weight_values = b[WEIGHTS].view.len / 8;
    if (b[IDS].view.ndim != 2 || b[WEIGHTS].view.ndim != 2
            || b[IDS].view.shape[0] != count || b[WEIGHTS].view.shape[0] != count
            || b[IDS].view.shape[1] != b[WEIGHTS].view.shape[1]
            || id_values != weight_values) {
        PyErr_SetString(PyExc_ValueError, "unpack_vectors: ids and weights must be matrices "
                        "of one row a vector, of one width");
        goto done;
    }
    Py_ssize_t width = count ? id_values / count : 0;
    PyObject **items = PySequence_Fast_ITEMS(stored);
    /* Every item checked before anything is written. */
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_Check(items[i]) || PyBytes_GET_SIZE(items[i]) % 12 != 0
                || PyBytes_GET_SIZE(items[i]) / 12 > width) {
            result = PyLong_FromSsize_t(i);
            goto done;
        }
    }
    int32_t *ids = b[IDS].view.buf;
    double *weights = b[WEIGHTS].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        const char *data = PyBytes_AS_STRING(items[i]);
        Py_ssize_t terms = PyBytes_GET_SIZE(items[i]) / 12;
        memcpy(ids + i * width, data, (size_t)terms * 4);
        memcpy(weights + i * width, data + terms * 4, (size_t)terms * 8);
    }
    result = PyLong_FromLong(-1);
done:
    release(b, 2);
    Py_DECREF(stored);
    return result;
}

static const char *signatures_from_bytes_doc =
    "signatures_from_bytes(stored, header, out) -> int\n\n"
    "Stored signatures (a list of bytes, each ``header`` then the values) into the rows of\n"
    "``out`` (uint32, ``len(stored)`` rows of as many values as a signature holds), byte\n"
    "for byte.  Returns -1; or the position of the first item that is not bytes of that\n"
    "length beginning with ``header``, and then nothing is written.";

/* ``Signer.from_bytes_many`` at a start-up: the window's two signatures an article
 * checked and copied in one pass, where numpy joined them, compared every header and
 * copied the values out again. */
static PyObject *signatures_from_bytes(PyObject *module, PyObject *const *args,
                                       Py_ssize_t nargs) {
    (void)module;
    if (!arguments_given("signatures_from_bytes", nargs, 3)) {
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "signatures_from_bytes: header must be bytes");
        return NULL;
    }
    PyObject *stored = PySequence_Fast(args[0],
                                       "signatures_from_bytes: stored must be a sequence");
    if (stored == NULL) {
        return NULL;
    }
    Buffer b[1];
    memset(b, 0, sizeof b);
    if (take(args[2], &b[0], 4, "IL", 1, "out") < 0) {
        release(b, 1);
        Py_DECREF(stored);
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(stored);
    PyObject *result = NULL;
    if (b[0].view.ndim != 2 || b[0].view.shape[0] != count) {
        PyErr_SetString(PyExc_ValueError, "signatures_from_bytes: out must be a matrix of "
                        "one row a signature");
        goto done;
    }
    const char *header = PyBytes_AS_STRING(args[1]);
    Py_ssize_t header_size = PyBytes_GET_SIZE(args[1]);
    Py_ssize_t values_size = b[0].view.shape[1] * 4;
    PyObject **items = PySequence_Fast_ITEMS(stored);
    for (Py_ssize_t i = 0; i < count; i++) {
        if (!PyBytes_Check(items[i]) || PyBytes_GET_SIZE(items[i]) != header_size + values_size
                || memcmp(PyBytes_AS_STRING(items[i]), header, (size_t)header_size) != 0) {
            result = PyLong_FromSsize_t(i);
            goto done;
        }
    }
    char *out = b[0].view.buf;
    for (Py_ssize_t i = 0; i < count; i++) {
        memcpy(out + i * values_size, PyBytes_AS_STRING(items[i]) + header_size,
               (size_t)values_size);
    }
    result = PyLong_FromLong(-1);
done:
    release(b, 1);
    Py_DECREF(stored);
    return result;
}

static PyMethodDef methods[] = {
    {"closest_story_rows", (PyCFunction)(void (*)(void))closest_story_rows, METH_FASTCALL,
     NULL},
    {"term_products", (PyCFunction)(void (*)(void))term_products, METH_FASTCALL, NULL},
    {"band_matches", (PyCFunction)(void (*)(void))band_matches, METH_FASTCALL, NULL},
    {"log_tf_idf", (PyCFunction)(void (*)(void))log_tf_idf, METH_FASTCALL, NULL},
    {"strongest", (PyCFunction)(void (*)(void))strongest, METH_FASTCALL, NULL},
    {"recent_insert", (PyCFunction)(void (*)(void))recent_insert, METH_FASTCALL, NULL},
    {"recent_matches", (PyCFunction)(void (*)(void))recent_matches, METH_FASTCALL, NULL},
    {"shingle_hashes", (PyCFunction)(void (*)(void))shingle_hashes, METH_FASTCALL, NULL},
    {"story_scores", (PyCFunction)(void (*)(void))story_scores, METH_FASTCALL, NULL},
    {"merge_sorted", (PyCFunction)(void (*)(void))merge_sorted, METH_FASTCALL, NULL},
    {"term_numbers", (PyCFunction)(void (*)(void))term_numbers, METH_FASTCALL, NULL},
    {"term_keys", (PyCFunction)(void (*)(void))term_keys, METH_FASTCALL, NULL},
    {"table_insert", (PyCFunction)(void (*)(void))table_insert, METH_FASTCALL, NULL},
    {"table_remove", (PyCFunction)(void (*)(void))table_remove, METH_FASTCALL, NULL},
    {"min_hashes", (PyCFunction)(void (*)(void))min_hashes, METH_FASTCALL, NULL},
    {"count_document", (PyCFunction)(void (*)(void))count_document, METH_FASTCALL, NULL},
    {"tf_idf_weights", (PyCFunction)(void (*)(void))tf_idf_weights, METH_FASTCALL, NULL},
    {"known_hashes", (PyCFunction)(void (*)(void))known_hashes, METH_FASTCALL, NULL},
    {"band_keys", (PyCFunction)(void (*)(void))band_keys, METH_FASTCALL, NULL},
    {"unpack_vectors", (PyCFunction)(void (*)(void))unpack_vectors, METH_FASTCALL, NULL},
    {"signatures_from_bytes", (PyCFunction)(void (*)(void))signatures_from_bytes,
     METH_FASTCALL, NULL},
    {"sort_pairs", (PyCFunction)(void (*)(void))sort_pairs, METH_FASTCALL, NULL},
    {"split_by_part", (PyCFunction)(void (*)(void))split_by_part, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "aggregator._kernels",
    "The clusterer's hot loops, compiled (see aggregator/native.py).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) {
    methods[0].ml_doc = closest_doc;
    methods[1].ml_doc = products_doc;
    methods[2].ml_doc = matches_doc;
    methods[3].ml_doc = weights_doc;
    methods[4].ml_doc = strongest_doc;
    methods[5].ml_doc = recent_insert_doc;
    methods[6].ml_doc = recent_matches_doc;
    methods[7].ml_doc = shingle_hashes_doc;
    methods[8].ml_doc = scores_doc;
    methods[9].ml_doc = merge_sorted_doc;
    methods[10].ml_doc = term_numbers_doc;
    methods[11].ml_doc = term_keys_doc;
    methods[12].ml_doc = table_insert_doc;
    methods[13].ml_doc = table_remove_doc;
    methods[14].ml_doc = min_hashes_doc;
    methods[15].ml_doc = count_document_doc;
    methods[16].ml_doc = tf_idf_weights_doc;
    methods[17].ml_doc = known_hashes_doc;
    methods[18].ml_doc = band_keys_doc;
    methods[19].ml_doc = unpack_vectors_doc;
    methods[20].ml_doc = signatures_from_bytes_doc;
    methods[21].ml_doc = sort_pairs_doc;
    methods[22].ml_doc = split_by_part_doc;
#ifdef HAVE_SHA_INSTRUCTIONS
    if (cpu_has_sha_instructions()) {
        sha1_compress_fastest = sha1_compress_instructions;
    }
#endif
    PyObject *created = PyModule_Create(&module);
    if (created != NULL && PyModule_AddObjectRef(
            created, "SHA_INSTRUCTIONS",
            sha1_compress_fastest == sha1_compress ? Py_False : Py_True) < 0) {
        Py_DECREF(created);
        return NULL;
    }
    return created;
}
