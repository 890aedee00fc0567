/* patched by strata: read window (scripts/fuse-native/read-window.c, inserted by scripts/patch-fuse-native.mjs).
 *
 * Verified bytes ahead of a reader of an open view file, offered by JavaScript, so that the
 * kernel's reads of them are answered on the FUSE thread with a memcpy instead of a round trip
 * through the JavaScript thread (two thread wake-ups per 128 KiB request, each expensive on a
 * virtual machine whose idle vCPUs halt). JavaScript offers only bytes that cannot change while
 * the handle is open (snapshot views are immutable) and that passed their hash check.
 *
 * One window per (fuse thread, file handle): contiguous segments [start, end) in offset order;
 * an offer that does not continue the window restarts it. A read is answered here when the window
 * covers it (up to the file's size). The first read answered at or past the window's mark tells
 * JavaScript how far the reader got (window_listen's callback, through a thread-safe function,
 * without waiting), so that its read-ahead moves on; without a listener such reads go to
 * JavaScript instead. Segments are freed once every byte was served, or once reads have
 * moved STRATA_WINDOW_BEHIND past them; memory is bounded per window and per process (an offer
 * beyond either is refused). One lock for all windows; each critical section is one memcpy.
 *
 * An offer with a token lends its bytes instead of copying them: JavaScript promises to leave the
 * memory (shared, so never moved or detached) alone until window_reclaim() returns the token,
 * which it does once the segment is freed. Reads copy out under the lock, so a freed segment is
 * never read again.
 */
#define STRATA_WINDOW_MAX_BYTES (64ull << 20)
#define STRATA_WINDOW_TOTAL_BYTES (512ull << 20)
#define STRATA_WINDOW_BEHIND (8ull << 20)

typedef struct {
  uint64_t offset;
  uint32_t length;
  uint32_t served;
  uint32_t token; /* 0: data is our own copy (malloc); else lent by JavaScript, returned by reclaim */
  char *data; /* NULL: zeros (a hole) */
} strata_seg_t;

typedef struct strata_window {
  void *owner;
  uint32_t fh;
  uint64_t size;
  uint64_t mark;
  int noted; /* the listener was told the reader reached the mark */
  strata_seg_t *segs; /* segs[head .. head + count) */
  uint32_t head, count, cap;
  uint64_t bytes; /* held in data */
  struct strata_window *next;
} strata_window_t;

static pthread_mutex_t strata_window_lock = PTHREAD_MUTEX_INITIALIZER;
static strata_window_t *strata_windows = NULL;
static uint64_t strata_window_total = 0;
static uint64_t strata_window_hits = 0;
static uint64_t strata_window_served = 0;
static napi_threadsafe_function strata_window_tsfn = NULL;
/* Tokens of lent segments freed since the last window_reclaim(). */
static uint32_t *strata_window_freed = NULL;
static uint32_t strata_window_freed_count = 0, strata_window_freed_cap = 0;

typedef struct {
  double owner;
  uint32_t fh;
  double position;
} strata_window_note_t;

/* On the JavaScript thread: listener(owner, fh, position). */
static void strata_window_call_js (napi_env env, napi_value js_cb, void *context, void *data) {
  strata_window_note_t *note = data;
  if (env != NULL && js_cb != NULL) {
    napi_value argv[3], undefined;
    napi_create_double(env, note->owner, &argv[0]);
    napi_create_uint32(env, note->fh, &argv[1]);
    napi_create_double(env, note->position, &argv[2]);
    napi_get_undefined(env, &undefined);
    napi_call_function(env, undefined, js_cb, 3, argv, NULL);
  }
  free(note);
}

/* Caller holds the lock. */
static strata_window_t *strata_window_find (void *owner, uint32_t fh, strata_window_t ***link) {
  strata_window_t **p = &strata_windows;
  for (; *p; p = &(*p)->next) {
    if ((*p)->owner == owner && (*p)->fh == fh) break;
  }
  if (link) *link = p;
  return *p;
}

/* Caller holds the lock. Frees a segment's bytes. */
static void strata_seg_free (strata_window_t *w, strata_seg_t *s) {
  if (s->data) {
    if (s->token == 0) {
      free(s->data);
    } else {
      if (strata_window_freed_count == strata_window_freed_cap) {
        uint32_t cap = strata_window_freed_cap ? strata_window_freed_cap * 2 : 256;
        uint32_t *grown = realloc(strata_window_freed, cap * sizeof(uint32_t));
        if (grown == NULL) abort(); /* cannot hand the memory back: better stop than let it be reused under a reader */
        strata_window_freed = grown;
        strata_window_freed_cap = cap;
      }
      strata_window_freed[strata_window_freed_count++] = s->token;
    }
    s->data = NULL;
    w->bytes -= s->length;
    strata_window_total -= s->length;
  }
}

/* Caller holds the lock. Drops leading segments that were served or that reads left behind. */
static void strata_window_trim (strata_window_t *w, uint64_t before) {
  while (w->count) {
    strata_seg_t *s = &w->segs[w->head];
    if (s->served < s->length && s->offset + s->length > before) break;
    strata_seg_free(w, s);
    w->head++;
    w->count--;
  }
  if (w->count == 0) w->head = 0;
}

/* Caller holds the lock. */
static void strata_window_clear (strata_window_t *w) {
  for (uint32_t i = 0; i < w->count; i++) strata_seg_free(w, &w->segs[w->head + i]);
  w->head = 0;
  w->count = 0;
}

/* Caller holds the lock. */
static void strata_window_unlink (strata_window_t **link) {
  strata_window_t *w = *link;
  strata_window_clear(w);
  *link = w->next;
  free(w->segs);
  free(w);
}

/* Forgets every window of one fuse thread: on mount and unmount. */
static void strata_window_forget (void *owner) {
  pthread_mutex_lock(&strata_window_lock);
  for (strata_window_t **p = &strata_windows; *p;) {
    if ((*p)->owner == owner) strata_window_unlink(p);
    else p = &(*p)->next;
  }
  pthread_mutex_unlock(&strata_window_lock);
}

/*
 * On the FUSE thread, before a read goes to JavaScript: the byte count when the window of
 * (owner, fh) answers [offset, offset + len) (buf filled), or -1 when JavaScript must.
 */
static int strata_window_read (void *owner, uint32_t fh, char *buf, size_t len, off_t offset) {
  int n = -1;
  strata_window_note_t *note = NULL;
  if (offset < 0 || len > INT32_MAX) return -1;
  uint64_t from = (uint64_t) offset;
  pthread_mutex_lock(&strata_window_lock);
  strata_window_t *w = strata_window_find(owner, fh, NULL);
  if (w && w->count && (from < w->mark || strata_window_tsfn != NULL)) {
    uint64_t to = from + len;
    if (to > w->size) to = w->size;
    strata_seg_t *first = &w->segs[w->head];
    strata_seg_t *last = &w->segs[w->head + w->count - 1];
    if (from >= w->size) {
      n = 0;
    } else if (from >= first->offset && to <= last->offset + last->length) {
      /* the segment holding `from`: the last one starting at or before it */
      uint32_t lo = 0, hi = w->count - 1;
      while (lo < hi) {
        uint32_t mid = (lo + hi + 1) / 2;
        if (w->segs[w->head + mid].offset <= from) lo = mid;
        else hi = mid - 1;
      }
      uint64_t at = from;
      for (uint32_t i = lo; at < to; i++) {
        strata_seg_t *s = &w->segs[w->head + i];
        uint64_t e = s->offset + s->length < to ? s->offset + s->length : to;
        if (s->data) memcpy(buf + (at - from), s->data + (at - s->offset), e - at);
        else memset(buf + (at - from), 0, e - at);
        s->served += (uint32_t) (e - at);
        at = e;
      }
      n = (int) (to - from);
      strata_window_hits++;
      strata_window_served += (uint64_t) n;
      strata_window_trim(w, from > STRATA_WINDOW_BEHIND ? from - STRATA_WINDOW_BEHIND : 0);
      if (to >= w->mark && !w->noted && strata_window_tsfn != NULL) {
        note = malloc(sizeof(strata_window_note_t));
        if (note) {
          w->noted = 1;
          note->owner = (double) (uintptr_t) owner;
          note->fh = fh;
          note->position = (double) to;
        }
      }
    }
  }
  pthread_mutex_unlock(&strata_window_lock);
  if (note && napi_call_threadsafe_function(strata_window_tsfn, note, napi_tsfn_nonblocking) != napi_ok) free(note);
  return n;
}

/*
 * window_put(thread, fh, size, offset, bytes | length[, token]): true when kept (bytes copied, or
 * lent when a token is given; a length: that many zeros). A refused loan stays JavaScript's.
 */
NAPI_METHOD(fuse_native_window_put) {
  NAPI_ARGV(6)
  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);
  NAPI_ARGV_UINT32(fh, 1);
  double size_d = 0, offset_d = 0;
  napi_get_value_double(env, argv[2], &size_d);
  napi_get_value_double(env, argv[3], &offset_d);
  void *data = NULL;
  size_t length = 0;
  bool is_buffer = false;
  napi_is_buffer(env, argv[4], &is_buffer);
  if (is_buffer) {
    napi_get_buffer_info(env, argv[4], &data, &length);
  } else {
    double l = 0;
    napi_get_value_double(env, argv[4], &l);
    length = l > 0 && l < (double) UINT32_MAX ? (size_t) l : 0;
  }
  uint32_t token = 0;
  if (argc > 5 && is_buffer) {
    napi_valuetype t;
    napi_typeof(env, argv[5], &t);
    if (t == napi_number) napi_get_value_uint32(env, argv[5], &token);
  }
  int kept = 0;
  uint64_t offset = offset_d > 0 ? (uint64_t) offset_d : 0;
  pthread_mutex_lock(&strata_window_lock);
  strata_window_t **link;
  strata_window_t *w = strata_window_find(ft, fh, &link);
  if (w == NULL && length > 0) {
    w = calloc(1, sizeof(strata_window_t));
    if (w) {
      w->owner = ft;
      w->fh = fh;
      w->next = strata_windows;
      strata_windows = w;
    }
  }
  if (w && length > 0 && length < UINT32_MAX) {
    w->size = (uint64_t) size_d;
    if (w->count) {
      strata_seg_t *last = &w->segs[w->head + w->count - 1];
      if (last->offset + last->length != offset) strata_window_clear(w); /* not a continuation: a new run */
    }
    uint64_t held = is_buffer ? length : 0;
    if (w->bytes + held <= STRATA_WINDOW_MAX_BYTES && strata_window_total + held <= STRATA_WINDOW_TOTAL_BYTES) {
      if (w->head + w->count == w->cap) {
        if (w->head > 0) {
          memmove(w->segs, w->segs + w->head, w->count * sizeof(strata_seg_t));
          w->head = 0;
        }
        if (w->count == w->cap) {
          uint32_t cap = w->cap ? w->cap * 2 : 64;
          strata_seg_t *segs = realloc(w->segs, cap * sizeof(strata_seg_t));
          if (segs) {
            w->segs = segs;
            w->cap = cap;
          }
        }
      }
      char *copy = NULL;
      if (is_buffer && token != 0) {
        copy = data;
      } else if (is_buffer) {
        copy = malloc(length);
        if (copy) memcpy(copy, data, length);
      }
      if (w->head + w->count < w->cap && (copy || !is_buffer)) {
        strata_seg_t *s = &w->segs[w->head + w->count++];
        s->offset = offset;
        s->length = (uint32_t) length;
        s->served = 0;
        s->token = copy == NULL ? 0 : token;
        s->data = copy;
        w->bytes += held;
        strata_window_total += held;
        kept = 1;
      } else if (token == 0) {
        free(copy);
      }
    }
  }
  pthread_mutex_unlock(&strata_window_lock);
  napi_value out;
  napi_get_boolean(env, kept, &out);
  return out;
}

/* window_mark(thread, fh, mark): the listener hears (once) of the first read answered here that reaches mark; without a listener, reads at or past it go to JavaScript. */
NAPI_METHOD(fuse_native_window_mark) {
  NAPI_ARGV(3)
  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);
  NAPI_ARGV_UINT32(fh, 1);
  double mark = 0;
  napi_get_value_double(env, argv[2], &mark);
  pthread_mutex_lock(&strata_window_lock);
  strata_window_t *w = strata_window_find(ft, fh, NULL);
  if (w) {
    w->mark = mark > 0 ? (uint64_t) mark : 0;
    w->noted = 0;
  }
  pthread_mutex_unlock(&strata_window_lock);
  return NULL;
}

/* window_listen(fn): fn(owner, fh, position) when a reader reaches its window's mark (one listener per process). */
NAPI_METHOD(fuse_native_window_listen) {
  NAPI_ARGV(1)
  if (strata_window_tsfn != NULL) return NULL;
  napi_value name;
  napi_create_string_utf8(env, "strata read window", NAPI_AUTO_LENGTH, &name);
  napi_threadsafe_function tsfn;
  if (napi_create_threadsafe_function(env, argv[0], NULL, name, 0, 1, NULL, NULL, NULL, strata_window_call_js, &tsfn) != napi_ok) return NULL;
  napi_unref_threadsafe_function(env, tsfn); /* the process may exit with it */
  pthread_mutex_lock(&strata_window_lock);
  strata_window_tsfn = tsfn;
  pthread_mutex_unlock(&strata_window_lock);
  return NULL;
}

/* window_owner(thread): the number window_listen's callback names this mount by. */
NAPI_METHOD(fuse_native_window_owner) {
  NAPI_ARGV(1)
  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);
  napi_value out;
  napi_create_double(env, (double) (uintptr_t) ft, &out);
  return out;
}

/* window_drop(thread, fh): forgets the handle's window (before its number can be reused). */
NAPI_METHOD(fuse_native_window_drop) {
  NAPI_ARGV(2)
  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);
  NAPI_ARGV_UINT32(fh, 1);
  pthread_mutex_lock(&strata_window_lock);
  strata_window_t **link;
  if (strata_window_find(ft, fh, &link)) strata_window_unlink(link);
  pthread_mutex_unlock(&strata_window_lock);
  return NULL;
}

/* window_reclaim(): the tokens of lent segments freed since the last call (their memory is JavaScript's again). */
NAPI_METHOD(fuse_native_window_reclaim) {
  napi_value out, v;
  pthread_mutex_lock(&strata_window_lock);
  uint32_t n = strata_window_freed_count;
  napi_create_array_with_length(env, n, &out);
  for (uint32_t i = 0; i < n; i++) {
    napi_create_uint32(env, strata_window_freed[i], &v);
    napi_set_element(env, out, i, v);
  }
  strata_window_freed_count = 0;
  pthread_mutex_unlock(&strata_window_lock);
  return out;
}

/* window_info(): [windows, bytes held, reads answered, bytes answered]. */
NAPI_METHOD(fuse_native_window_info) {
  napi_value out, v;
  pthread_mutex_lock(&strata_window_lock);
  double vals[4] = { 0, (double) strata_window_total, (double) strata_window_hits, (double) strata_window_served };
  for (strata_window_t *w = strata_windows; w; w = w->next) vals[0]++;
  pthread_mutex_unlock(&strata_window_lock);
  napi_create_array_with_length(env, 4, &out);
  for (uint32_t i = 0; i < 4; i++) {
    napi_create_double(env, vals[i], &v);
    napi_set_element(env, out, i, v);
  }
  return out;
}
/* end of strata read window */
