/* patched by strata: per-path cache timeouts (scripts/fuse-native/reply-timeouts.c, inserted by scripts/patch-fuse-native.mjs).
 *
 * libfuse2's high-level API answers every LOOKUP with the mount's entry_timeout and attr_timeout
 * and every GETATTR with its attr_timeout: one lifetime for the whole mount, which the live tree
 * needs short (1 s). Files inside snapshot views never change, so the kernel may keep their
 * entries and attributes much longer, and then a `find` or `stat` over a view it has seen is
 * answered by the kernel alone. So getattr may say how long its answer stays true (JavaScript
 * signals it in milliseconds after the stat; the stat cache gives what is left of the lifetime
 * of the listing an entry came from), and for a path whose meaning can change under the same
 * name (a snapshot folder) a generation: the kernel compares a LOOKUP's generation with its
 * inode's when it revalidates a name, and when they differ drops the name with everything it
 * cached below it. The polling loop processes each request with a channel of its own whose send
 * hook, when the reply is the one to this thread's LOOKUP or GETATTR and its getattr named a
 * lifetime or generation, writes them into the reply (entry_valid and attr_valid, generation)
 * before passing it to the kernel's channel. libfuse calls getattr and sends the reply on the
 * thread that received the request (fuse-native's handlers wait for JavaScript's answer), so a
 * thread-local carries the lifetime from one to the other. Without the polling loop
 * (STRATA_FUSE_POLL_US=0) every reply keeps the mount's timeouts.
 */
#include <sys/uio.h>

/* struct fuse_in_header / fuse_out_header / fuse_entry_out / fuse_attr_out offsets (fuse_kernel.h). */
#define STRATA_FUSE_LOOKUP 1
#define STRATA_FUSE_GETATTR 3
#define STRATA_IN_OPCODE 4
#define STRATA_IN_UNIQUE 8
#define STRATA_OUT_ERROR 4
#define STRATA_OUT_UNIQUE 8
#define STRATA_OUT_HEADER 16
#define STRATA_ENTRY_GENERATION 8 /* u64, after u64 nodeid */
#define STRATA_ENTRY_VALID 16 /* u64 entry_valid, u64 attr_valid, u32 entry_valid_nsec, u32 attr_valid_nsec */
#define STRATA_ENTRY_MIN 40
#define STRATA_ATTR_VALID 0 /* u64 attr_valid, u32 attr_valid_nsec */
#define STRATA_ATTR_MIN 16
#define STRATA_REPLY_MAX 256

static __thread uint32_t strata_reply_opcode = 0;
static __thread uint64_t strata_reply_unique = 0;
static __thread const double *strata_reply_keep_ms = NULL; /* where this request's getattr left its lifetime (ms; 0: the mount's) */
static __thread const double *strata_reply_generation = NULL; /* and its generation (-1: libfuse's) */
static uint64_t strata_reply_kept = 0; /* replies given a lifetime or generation of their own */

/* The polling loop, before processing the request in `mem`. */
static void strata_reply_begin (const char *mem, int len) {
  strata_reply_keep_ms = NULL;
  strata_reply_generation = NULL;
  strata_reply_opcode = 0;
  strata_reply_unique = 0;
  if (len < 16) return;
  memcpy(&strata_reply_opcode, mem + STRATA_IN_OPCODE, sizeof(strata_reply_opcode));
  memcpy(&strata_reply_unique, mem + STRATA_IN_UNIQUE, sizeof(strata_reply_unique));
}

/* getattr, on the request's thread: its answer's lifetime and generation will be at *keep_ms and *generation. */
static void strata_reply_keep (const double *keep_ms, const double *generation) {
  strata_reply_keep_ms = keep_ms;
  strata_reply_generation = generation;
}

static void strata_put_timeout (char *at_sec, char *at_nsec, double ms) {
  uint64_t sec = (uint64_t) (ms / 1000);
  uint32_t nsec = (uint32_t) ((ms - (double) sec * 1000) * 1000000);
  if (nsec > 999999999) nsec = 999999999;
  memcpy(at_sec, &sec, sizeof(sec));
  memcpy(at_nsec, &nsec, sizeof(nsec));
}

/* The request channel's send: the reply, with this thread's lifetime when it applies, to the kernel's channel. */
static int strata_reply_send (struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  struct fuse_chan *kernel = (struct fuse_chan *) fuse_chan_data(ch);
  double keep = strata_reply_keep_ms ? *strata_reply_keep_ms : 0;
  double generation = strata_reply_generation ? *strata_reply_generation : -1;
  if (!(keep > 0) && !(generation >= 0)) return fuse_chan_send(kernel, iov, count);
  if (count != 2 || iov[0].iov_len < STRATA_OUT_HEADER || iov[1].iov_len > STRATA_REPLY_MAX) return fuse_chan_send(kernel, iov, count);
  int32_t error;
  uint64_t unique;
  memcpy(&error, (const char *) iov[0].iov_base + STRATA_OUT_ERROR, sizeof(error));
  memcpy(&unique, (const char *) iov[0].iov_base + STRATA_OUT_UNIQUE, sizeof(unique));
  size_t len = iov[1].iov_len;
  int lookup = strata_reply_opcode == STRATA_FUSE_LOOKUP && len >= STRATA_ENTRY_MIN;
  int getattr = strata_reply_opcode == STRATA_FUSE_GETATTR && len >= STRATA_ATTR_MIN;
  if (error != 0 || unique != strata_reply_unique || !(lookup || getattr)) return fuse_chan_send(kernel, iov, count);
  if (getattr && !(keep > 0)) return fuse_chan_send(kernel, iov, count); /* a GETATTR reply has no generation */
  char out[STRATA_REPLY_MAX];
  memcpy(out, iov[1].iov_base, len);
  if (lookup && generation >= 0) {
    uint64_t g = (uint64_t) generation;
    memcpy(out + STRATA_ENTRY_GENERATION, &g, sizeof(g));
  }
  if (lookup && keep > 0) {
    strata_put_timeout(out + STRATA_ENTRY_VALID, out + STRATA_ENTRY_VALID + 16, keep);
    strata_put_timeout(out + STRATA_ENTRY_VALID + 8, out + STRATA_ENTRY_VALID + 20, keep);
  } else if (getattr) {
    strata_put_timeout(out + STRATA_ATTR_VALID, out + STRATA_ATTR_VALID + 8, keep);
  }
  __atomic_add_fetch(&strata_reply_kept, 1, __ATOMIC_RELAXED);
  struct iovec v[2] = { iov[0], { .iov_base = out, .iov_len = len } };
  return fuse_chan_send(kernel, v, 2);
}

static struct fuse_chan_ops strata_reply_ops = { .receive = NULL, .send = strata_reply_send, .destroy = NULL };

/* A channel that sends through `kernel` with the hook above (NULL when out of memory). */
static struct fuse_chan *strata_reply_channel (struct fuse_chan *kernel) {
  return fuse_chan_new(&strata_reply_ops, fuse_chan_fd(kernel), fuse_chan_bufsize(kernel), kernel);
}

/* reply_info(): how many replies were given a lifetime or generation of their own so far (all mounts of this process). */
NAPI_METHOD(fuse_native_reply_info) {
  napi_value out;
  napi_create_double(env, (double) __atomic_load_n(&strata_reply_kept, __ATOMIC_RELAXED), &out);
  return out;
}
/* end of strata per-path cache timeouts */
