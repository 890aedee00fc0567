/* patched by strata: stat cache (scripts/fuse-native/stat-cache.c, inserted by scripts/patch-fuse-native.mjs).
 *
 * Attributes of the entries of a directory listing, kept for a while so that getattr on those
 * paths is answered on the FUSE thread, without a round trip through the JavaScript thread.
 * libfuse2 has no readdirplus: after a listing the kernel still looks up every name it stats,
 * and each lookup is a getattr by path. JavaScript opts a listing in by signalling readdir with a
 * lifetime in milliseconds (a fourth argument); it does so only for listings whose entries cannot
 * change within that lifetime (read-only snapshot views). An answer from here tells the kernel to
 * keep it for what is left of that lifetime (reply-timeouts.c), so it is never older than one the
 * kernel's own cache could give.
 * One table per process, keyed by (fuse thread, path); readers take a shared lock.
 */
#include <time.h>

#define STRATA_STAT_INTS 18
#define STRATA_STAT_MAX_ENTRIES (1u << 20)

typedef struct {
  char *path; /* NULL: free */
  void *owner;
  uint32_t hash;
  uint64_t expires_ms;
  uint32_t stat[STRATA_STAT_INTS];
} strata_stat_slot_t;

static pthread_rwlock_t strata_stat_lock = PTHREAD_RWLOCK_INITIALIZER;
static strata_stat_slot_t *strata_stat_slots = NULL;
static uint32_t strata_stat_cap = 0; /* a power of two, or 0 */
static uint32_t strata_stat_used = 0;
static uint64_t strata_stat_hits = 0;

static uint64_t strata_now_ms (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t strata_hash (const char *s, void *owner) {
  uint32_t h = 2166136261u ^ (uint32_t) (uintptr_t) owner;
  for (; *s; s++) h = (h ^ (unsigned char) *s) * 16777619u;
  return h;
}

/* Caller holds the write lock. */
static void strata_stat_clear_locked (void) {
  for (uint32_t i = 0; i < strata_stat_cap; i++) free(strata_stat_slots[i].path);
  free(strata_stat_slots);
  strata_stat_slots = NULL;
  strata_stat_cap = 0;
  strata_stat_used = 0;
}

/* Caller holds the write lock; the table has room. Takes ownership of path. */
static void strata_stat_place (char *path, void *owner, uint32_t hash, uint64_t expires_ms, const uint32_t *stat) {
  uint32_t mask = strata_stat_cap - 1;
  for (uint32_t i = hash & mask;; i = (i + 1) & mask) {
    strata_stat_slot_t *s = &strata_stat_slots[i];
    if (s->path == NULL) {
      s->path = path;
      s->owner = owner;
      s->hash = hash;
      strata_stat_used++;
    } else if (s->hash != hash || s->owner != owner || strcmp(s->path, path) != 0) {
      continue;
    } else {
      free(path);
    }
    s->expires_ms = expires_ms;
    memcpy(s->stat, stat, sizeof(s->stat));
    return;
  }
}

/*
 * Caller holds the write lock. Makes room for `more` entries, keeping the table at most half
 * full: when it must grow, expired entries are dropped first (and everything, past
 * STRATA_STAT_MAX_ENTRIES). False when memory ran out (the table is then empty).
 */
static int strata_stat_reserve (uint32_t more) {
  if (more > STRATA_STAT_MAX_ENTRIES) return 0;
  if ((uint64_t) (strata_stat_used + more) * 2 <= strata_stat_cap) return 1;
  uint64_t now = strata_now_ms();
  uint32_t live = 0;
  for (uint32_t i = 0; i < strata_stat_cap; i++) {
    if (strata_stat_slots[i].path && strata_stat_slots[i].expires_ms > now) live++;
  }
  if (live + more > STRATA_STAT_MAX_ENTRIES) {
    strata_stat_clear_locked();
    live = 0;
  }
  uint32_t cap = 1024;
  while ((uint64_t) (live + more) * 2 > cap) cap *= 2;
  strata_stat_slot_t *old = strata_stat_slots;
  uint32_t old_cap = strata_stat_cap;
  strata_stat_slots = calloc(cap, sizeof(strata_stat_slot_t));
  if (strata_stat_slots == NULL) {
    strata_stat_slots = old;
    strata_stat_clear_locked();
    return 0;
  }
  strata_stat_cap = cap;
  strata_stat_used = 0;
  for (uint32_t i = 0; i < old_cap; i++) {
    if (old[i].path == NULL) continue;
    if (old[i].expires_ms > now) strata_stat_place(old[i].path, old[i].owner, old[i].hash, old[i].expires_ms, old[i].stat);
    else free(old[i].path);
  }
  free(old);
  return 1;
}

/* True (and *stat filled, *keep_ms set to what is left of the entry's lifetime) when path has live attributes cached for this fuse thread. */
static int strata_stat_get (void *owner, const char *path, struct stat *stat, double *keep_ms) {
  int found = 0;
  uint32_t hash = strata_hash(path, owner);
  pthread_rwlock_rdlock(&strata_stat_lock);
  if (strata_stat_cap) {
    uint32_t mask = strata_stat_cap - 1;
    for (uint32_t i = hash & mask; strata_stat_slots[i].path; i = (i + 1) & mask) {
      strata_stat_slot_t *s = &strata_stat_slots[i];
      if (s->hash == hash && s->owner == owner && strcmp(s->path, path) == 0) {
        uint64_t now = strata_now_ms();
        if (s->expires_ms > now) {
          *keep_ms = (double) (s->expires_ms - now);
          uint32_t ints[STRATA_STAT_INTS];
          memcpy(ints, s->stat, sizeof(ints));
          populate_stat(ints, stat);
          found = 1;
        }
        break;
      }
    }
  }
  pthread_rwlock_unlock(&strata_stat_lock);
  if (found) __atomic_add_fetch(&strata_stat_hits, 1, __ATOMIC_RELAXED);
  return found;
}

/* Forgets every path of one fuse thread: on mount and unmount. */
static void strata_stat_forget (void *owner) {
  pthread_rwlock_wrlock(&strata_stat_lock);
  for (uint32_t i = 0; i < strata_stat_cap; i++) {
    if (strata_stat_slots[i].path && strata_stat_slots[i].owner == owner) strata_stat_slots[i].expires_ms = 0;
  }
  pthread_rwlock_unlock(&strata_stat_lock);
}

/*
 * Called from readdir's signal (JavaScript thread) with the listing's names and packed stats:
 * keeps dir/name -> stat for ttl_ms milliseconds. Builds the entries first, then takes the
 * write lock once.
 */
static void strata_stat_put_listing (napi_env env, void *owner, const char *dir, napi_value names, napi_value stats, uint32_t n, double ttl_ms) {
  if (!(ttl_ms > 0) || n == 0 || n > STRATA_STAT_MAX_ENTRIES) return;
  strata_stat_slot_t *tmp = calloc(n, sizeof(strata_stat_slot_t));
  if (tmp == NULL) return;
  size_t dlen = strlen(dir);
  if (dlen == 1 && dir[0] == '/') dlen = 0; /* the root: "/" + name */
  uint64_t expires_ms = strata_now_ms() + (uint64_t) ttl_ms;
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++) {
    napi_value raw_name, raw_stat;
    char name[1024];
    size_t nlen;
    void *data;
    size_t blen;
    if (napi_get_element(env, names, i, &raw_name) != napi_ok) continue;
    if (napi_get_value_string_utf8(env, raw_name, name, sizeof(name), &nlen) != napi_ok || nlen + 1 >= sizeof(name)) continue;
    if (napi_get_element(env, stats, i, &raw_stat) != napi_ok) continue;
    if (napi_get_buffer_info(env, raw_stat, &data, &blen) != napi_ok || blen < sizeof(tmp[k].stat)) continue;
    char *path = malloc(dlen + nlen + 2);
    if (path == NULL) break;
    memcpy(path, dir, dlen);
    path[dlen] = '/';
    memcpy(path + dlen + 1, name, nlen + 1);
    tmp[k].path = path;
    tmp[k].hash = strata_hash(path, owner);
    memcpy(tmp[k].stat, data, sizeof(tmp[k].stat));
    k++;
  }
  pthread_rwlock_wrlock(&strata_stat_lock);
  int room = strata_stat_reserve(k);
  for (uint32_t i = 0; i < k; i++) {
    if (room) strata_stat_place(tmp[i].path, owner, tmp[i].hash, expires_ms, tmp[i].stat);
    else free(tmp[i].path);
  }
  pthread_rwlock_unlock(&strata_stat_lock);
  free(tmp);
}

/* stat_forget(thread): forgets every path of that mount (its snapshots changed). */
NAPI_METHOD(fuse_native_stat_forget) {
  NAPI_ARGV(1)
  NAPI_ARGV_BUFFER_CAST(fuse_thread_t *, ft, 0);
  strata_stat_forget(ft);
  return NULL;
}

/* stat_cache_info(): [entries, getattr answers given from the cache so far]. */
NAPI_METHOD(fuse_native_stat_cache_info) {
  napi_value out, a, b;
  pthread_rwlock_rdlock(&strata_stat_lock);
  uint32_t used = strata_stat_used;
  pthread_rwlock_unlock(&strata_stat_lock);
  napi_create_array_with_length(env, 2, &out);
  napi_create_uint32(env, used, &a);
  napi_create_double(env, (double) __atomic_load_n(&strata_stat_hits, __ATOMIC_RELAXED), &b);
  napi_set_element(env, out, 0, a);
  napi_set_element(env, out, 1, b);
  return out;
}
/* end of strata stat cache */
