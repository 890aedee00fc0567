/* patched by strata: polling session loop (scripts/fuse-native/poll-loop.c, inserted by scripts/patch-fuse-native.mjs).
 *
 * Replaces fuse_loop_mt. A request that finds the FUSE thread asleep in read() on /dev/fuse costs
 * the requester a wake-up of that thread; on this virtual machine, whose idle vCPUs halt, that
 * wake-up is most of the cost of a request answered on the FUSE thread (a stat from the stat
 * cache): `perf` puts ~60 % of a `find -exec stat` process's time in fuse_dev_queue_req's
 * wake-up. So the thread that receives keeps reading the device without blocking for
 * STRATA_FUSE_POLL_US microseconds (default 50; 0: fuse_loop_mt serves instead) after each
 * request other than a read or a write, and only then sleeps in poll(): metadata requests that
 * follow each other closely find it awake. Not after reads and writes: a sequential read is CPU
 * bound on this 2-core machine, and polling between its requests took a core from decoding
 * (a performance-view read fell from 0.8x to 0.67x of the in-memory ceiling).
 *
 * One thread at a time receives (the "receiver"); it answers what it received itself. A request
 * that must go to JavaScript blocks its thread, so before blocking (strata_loop_will_block, called
 * by FUSE_NATIVE_HANDLER) the thread hands the receiver role to an idle thread, or starts one (at
 * most STRATA_LOOP_MAX_THREADS), and becomes idle once answered. Requests answered on the FUSE
 * thread never change threads. The loop ends when the session does (unmount: ENODEV) and returns
 * once every thread it started has finished.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <time.h>
#include <fcntl.h>

#define STRATA_LOOP_MAX_THREADS 64
#define STRATA_LOOP_DEFAULT_POLL_US 50

typedef struct {
  struct fuse_session *se;
  struct fuse_chan *ch;
  struct fuse_chan *reply_ch; /* sends through ch, giving replies their own lifetimes (reply-timeouts.c); NULL: ch */
  int fd;
  size_t bufsize;
  uint64_t poll_ns;
  pthread_mutex_t lock;
  pthread_cond_t cond; /* the receiver role is free, the loop ended, or a thread finished */
  int receiving; /* a thread holds the receiver role */
  int idle; /* threads waiting for it */
  int threads; /* threads started by the loop and not finished (the loop's own not counted) */
  int ended;
} strata_loop_t;

static __thread strata_loop_t *strata_loop_current = NULL; /* set on the loop's threads */
static __thread int strata_loop_holding = 0; /* this thread is the receiver, answering what it received */

static uint64_t strata_loop_now_ns (void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

/* Opcodes of struct fuse_in_header (fuse_kernel.h) after which the receiver does not poll. */
#define STRATA_FUSE_READ 15
#define STRATA_FUSE_WRITE 16

/* Whether to poll after the request in `mem`: not after reads and writes (see the top). */
static int strata_loop_polls_after (const char *mem, int len) {
  if (len < 8) return 0;
  uint32_t opcode;
  memcpy(&opcode, mem + 4, sizeof(opcode));
  return opcode != STRATA_FUSE_READ && opcode != STRATA_FUSE_WRITE;
}

/* The receiver: the next request into fbuf, polling first when `poll`; <= 0 when the session ended. */
static int strata_loop_receive (strata_loop_t *lp, char *mem, struct fuse_buf *fbuf, struct fuse_chan **ch, int poll_first) {
  uint64_t until = poll_first ? strata_loop_now_ns() + lp->poll_ns : 0;
  for (;;) {
    if (fuse_session_exited(lp->se)) return 0;
    struct fuse_chan *tmp = lp->ch;
    memset(fbuf, 0, sizeof(*fbuf));
    fbuf->mem = mem;
    fbuf->size = lp->bufsize;
    int res = fuse_session_receive_buf(lp->se, fbuf, &tmp);
    if (res > 0) {
      *ch = tmp;
      return res;
    }
    if (res == 0) return 0; /* ENODEV (unmounted) or exited */
    if (res != -EAGAIN && res != -EINTR) return res;
    if (res == -EAGAIN && (until == 0 || strata_loop_now_ns() >= until)) {
      struct pollfd p = { .fd = lp->fd, .events = POLLIN };
      poll(&p, 1, -1);
      until = 0;
    }
  }
}

static void *strata_loop_thread (void *data);

/* Caller holds lp->lock. Gives the receiver role up: to an idle thread, or a new one. */
static void strata_loop_pass (strata_loop_t *lp) {
  lp->receiving = 0;
  if (lp->ended) return;
  if (lp->idle > 0) {
    pthread_cond_signal(&lp->cond);
  } else if (lp->threads < STRATA_LOOP_MAX_THREADS) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* signals stay with JavaScript's thread */
    if (pthread_create(&t, &attr, strata_loop_thread, lp) == 0) lp->threads++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
  }
  /* else: every thread is busy; the first to finish takes the role */
}

/* Called by a request's thread before it blocks for JavaScript's answer. */
static void strata_loop_will_block (void) {
  strata_loop_t *lp = strata_loop_current;
  if (lp == NULL || !strata_loop_holding) return;
  strata_loop_holding = 0;
  pthread_mutex_lock(&lp->lock);
  strata_loop_pass(lp);
  pthread_mutex_unlock(&lp->lock);
}

/* A thread of the loop: takes the receiver role when it is free, answers requests until it gives it up. */
static void strata_loop_run (strata_loop_t *lp) {
  char *mem = malloc(lp->bufsize);
  strata_loop_current = lp;
  pthread_mutex_lock(&lp->lock);
  while (mem != NULL && !lp->ended) {
    if (lp->receiving) {
      lp->idle++;
      pthread_cond_wait(&lp->cond, &lp->lock);
      lp->idle--;
      continue;
    }
    lp->receiving = 1;
    pthread_mutex_unlock(&lp->lock);
    strata_loop_holding = 1;
    int poll_next = 0;
    while (strata_loop_holding) {
      struct fuse_buf fbuf;
      struct fuse_chan *ch = NULL;
      int res = strata_loop_receive(lp, mem, &fbuf, &ch, poll_next);
      if (res <= 0) {
        if (res < 0) fprintf(stderr, "fuse: reading device: %s\n", strerror(-res));
        fuse_session_exit(lp->se);
        pthread_mutex_lock(&lp->lock);
        lp->ended = 1;
        pthread_cond_broadcast(&lp->cond);
        pthread_mutex_unlock(&lp->lock);
        break;
      }
      poll_next = strata_loop_polls_after(mem, res);
      strata_reply_begin(mem, res);
      fuse_session_process_buf(lp->se, &fbuf, lp->reply_ch ? lp->reply_ch : ch); /* may call strata_loop_will_block */
    }
    strata_loop_holding = 0;
    pthread_mutex_lock(&lp->lock);
    /* Still the receiver when the session ended under us; otherwise someone else is, or nobody. */
    if (lp->ended) lp->receiving = 0;
  }
  if (mem == NULL) {
    lp->ended = 1;
    fuse_session_exit(lp->se);
    pthread_cond_broadcast(&lp->cond);
  }
  pthread_mutex_unlock(&lp->lock);
  free(mem);
  strata_loop_current = NULL;
}

static void *strata_loop_thread (void *data) {
  strata_loop_t *lp = data;
  strata_loop_run(lp);
  pthread_mutex_lock(&lp->lock);
  lp->threads--;
  pthread_cond_broadcast(&lp->cond);
  pthread_mutex_unlock(&lp->lock);
  return NULL;
}

/* fuse_loop_mt's replacement: serves `f` until it is unmounted. */
static int strata_loop_mt (struct fuse *f) {
  const char *env = getenv("STRATA_FUSE_POLL_US");
  long us = env && *env ? strtol(env, NULL, 10) : STRATA_LOOP_DEFAULT_POLL_US;
  if (us <= 0) return fuse_loop_mt(f);
  strata_loop_t lp;
  memset(&lp, 0, sizeof(lp));
  lp.se = fuse_get_session(f);
  lp.ch = fuse_session_next_chan(lp.se, NULL);
  lp.fd = fuse_chan_fd(lp.ch);
  lp.bufsize = fuse_chan_bufsize(lp.ch);
  lp.poll_ns = (uint64_t) us * 1000ull;
  int flags = fcntl(lp.fd, F_GETFL);
  if (flags < 0 || fcntl(lp.fd, F_SETFL, flags | O_NONBLOCK) < 0) return fuse_loop_mt(f);
  pthread_mutex_init(&lp.lock, NULL);
  pthread_cond_init(&lp.cond, NULL);
  if (fuse_start_cleanup_thread(f) != 0) return -1;
  lp.reply_ch = strata_reply_channel(lp.ch);
  strata_loop_run(&lp);
  pthread_mutex_lock(&lp.lock);
  while (lp.threads > 0) pthread_cond_wait(&lp.cond, &lp.lock);
  pthread_mutex_unlock(&lp.lock);
  fuse_stop_cleanup_thread(f);
  if (lp.reply_ch) fuse_chan_destroy(lp.reply_ch);
  pthread_cond_destroy(&lp.cond);
  pthread_mutex_destroy(&lp.lock);
  fcntl(lp.fd, F_SETFL, flags);
  return 0;
}
/* end of strata polling session loop */
