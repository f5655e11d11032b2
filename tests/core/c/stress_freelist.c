/*
 * stress_freelist.c -- multi-threaded stress test of src/pypool_freelist.h.
 *
 * No Python involved.  Built and run by tests/test_freelist_c.py, normally
 * under ThreadSanitizer:
 *
 *     cc -std=c11 -O1 -g -fsanitize=thread -pthread -Isrc \
 *        tests/c/stress_freelist.c -o stress_freelist
 *     ./stress_freelist [--threads N] [--ops M] [--slots S] [--spare K]
 *                       [--fifo] [--seed X]
 *
 * M is the total number of operations, split evenly between the threads.
 * The list starts with enough segments for S filled slots plus K spare
 * segments (default 1).  With K = 0 and S a multiple of 64 every slot is
 * filled: in FIFO mode the ring is then full whenever no slot is held.
 *
 * What it checks
 * --------------
 * - Exclusive ownership: every slot a thread holds (BUSY after pfl_pop,
 *   RESERVED after pfl_claim, CREATING after pfl_reserve) is marked in an
 *   owner array with an atomic exchange from -1; any other previous value
 *   means the free list handed one index to two holders ("held twice").
 *   The owner operations are relaxed on purpose, so that they add no
 *   synchronisation of their own: the hand-off has to come from the list.
 * - Happens-before on hand-off: each holder does a plain (non-atomic)
 *   read-modify-write of the slot's payload.  If the list failed to order one
 *   holder after the previous one, ThreadSanitizer reports a data race (and
 *   without it, increments may get lost, which the final sum check sees).
 * - Conservation: the number of filled (IDLE) slots stays what the test put
 *   there.  After the threads are joined every IDLE slot pops exactly once
 *   (no index lost, none duplicated), every slot is IDLE or EMPTY, and the
 *   empty stack holds exactly the remaining slots.
 * - pfl_now_ns() never goes backwards within a thread.
 *
 * LIFO mode also grows the list concurrently (documented as safe there) and
 * sometimes fills a few of the new slots.  FIFO mode grows only up front, since
 * moving the ring needs the list to itself.
 *
 * Negative control: built with -DPFL_STRESS_SELFTEST_DOUBLE_POP the program
 * makes one thread give a slot back to the list without giving up its
 * ownership first (a caller bug the list cannot see); the next holder must
 * then be reported with "held twice".  This shows that the checks check.
 *
 * Exit status: 0 and one "ok: ..." line on success, 2 with a "FAIL: ..."
 * message on a violation, 1 on a usage error.
 */
/* As Python.h does for the extension: declares clock_gettime() and the coarse
 * clock, which the header uses but whose feature macros it does not set. */
#define _GNU_SOURCE 1

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pypool_freelist.h"

#if defined(__has_feature)
#  if __has_feature(thread_sanitizer)
#    define STRESS_TSAN 1
#  endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(STRESS_TSAN)
#  define STRESS_TSAN 1
#endif

#ifdef STRESS_TSAN
#  define DEFAULT_OPS 4000000L
#else
#  define DEFAULT_OPS 2000000L
#endif
#define DEFAULT_THREADS 8
#define DEFAULT_SLOTS 24
/* LIFO mode: how many segments concurrent growth may add at most. */
#define EXTRA_SEGS 24u
#define MAX_HELD 4

static pfl_list fl;
static int fifo_mode;
static uint32_t max_slots;           /* size of the per-slot arrays */
static _Atomic int *owner;           /* -1 or the holding thread's id */
static unsigned long *payload;       /* plain memory: hand-off must order it */
static _Atomic long filled;          /* slots the test has made IDLE, net */
static _Atomic int start_flag;
static _Atomic uint32_t grow_budget; /* LIFO: growth attempts left */
#define NHINTS 16
static _Atomic uint32_t hints[NHINTS]; /* indices popped recently */

typedef struct {
    int id;
    long ops;
    uint32_t grow_every;  /* LIFO: one growth attempt per this many ops, about */
    uint64_t rng;
    int64_t last_now;
    long pops, pop_empty, claims, claim_fail, unclaims, retires, discards,
         reserves, abandons, grows, extra_fills, holds, yields, refill_waits;
} worker;

static atomic_flag failing = ATOMIC_FLAG_INIT;

static void fail(const char *fmt, ...)
{
    va_list ap;
    if (atomic_flag_test_and_set(&failing))
        for (;;)
            pause();  /* another thread is reporting and exiting */
    va_start(ap, fmt);
    fputs("FAIL: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    _exit(2);
}

static uint32_t rnd(worker *w)
{
    /* xorshift64* */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

static void check_clock(worker *w)
{
    int64_t now = pfl_now_ns();
    if (now < w->last_now)
        fail("pfl_now_ns() went backwards in thread %d: %" PRId64 " after %" PRId64,
             w->id, now, w->last_now);
    w->last_now = now;
}

/* ------------------------------------------------------------ ownership */

static void take(worker *w, uint32_t i, const char *how)
{
    if (i >= max_slots)
        fail("%s returned index %" PRIu32 " outside the list (capacity %" PRIu32 ")",
             how, i, pfl_capacity(&fl));
    int prev = -1;
    if (!atomic_compare_exchange_strong_explicit(&owner[i], &prev, w->id,
                                                 memory_order_relaxed,
                                                 memory_order_relaxed))
        fail("slot %" PRIu32 " held twice: %s in thread %d, already held by thread %d",
             i, how, w->id, prev);
    payload[i]++;          /* plain access: needs happens-before from the list */
    w->holds++;
}

static void hold_briefly(worker *w, uint32_t i)
{
    uint32_t r = rnd(w);
    if ((r & 63u) == 0) {
        sched_yield();
        w->yields++;
    } else {
        for (uint32_t k = r & 31u; k > 0; k--)
            atomic_signal_fence(memory_order_seq_cst);
    }
    if (atomic_load_explicit(&owner[i], memory_order_relaxed) != w->id)
        fail("slot %" PRIu32 " changed owner while thread %d held it", i, w->id);
}

static void give_up(worker *w, uint32_t i)
{
    int prev = w->id;
#ifdef PFL_STRESS_SELFTEST_DOUBLE_POP
    static atomic_int broken_once;
    if (w->id == 0 && !atomic_exchange(&broken_once, 1)) {
        fprintf(stderr, "selftest: slot %" PRIu32 " given back still owned, on purpose\n", i);
        return;
    }
#endif
    /* Owner back to -1 before the slot goes back to the list. */
    if (!atomic_compare_exchange_strong_explicit(&owner[i], &prev, -1,
                                                 memory_order_relaxed,
                                                 memory_order_relaxed))
        fail("slot %" PRIu32 " released by thread %d but owned by %d", i, w->id, prev);
}

/* ------------------------------------------------------------ operations */

/* Reserve an EMPTY slot and fill it (-> IDLE), to make up for one the caller
 * just emptied.  The caller's own slot went onto the empty stack, but another
 * thread's reserve+abandon may hold it for a moment: retry for a while, then
 * give up (an EMPTY slot lost from the empty stack). */
static void refill(worker *w, const char *after)
{
    uint32_t j = pfl_reserve(&fl);
    if (j == PFL_NIL) {
        int64_t deadline = pfl_now_ns() + 10 * (int64_t)1000000000;
        do {
            w->refill_waits++;
            sched_yield();
            j = pfl_reserve(&fl);
        } while (j == PFL_NIL && pfl_now_ns() < deadline);
        if (j == PFL_NIL)
            fail("pfl_reserve() found no EMPTY slot for 10 s after %s in thread %d",
                 after, w->id);
    }
    w->reserves++;
    take(w, j, "pfl_reserve");
    if (pfl_state(&fl, j) != PFL_CREATING)
        fail("slot %" PRIu32 " not CREATING after pfl_reserve", j);
    hold_briefly(w, j);
    give_up(w, j);
    if (!pfl_fill(&fl, j))
        fail("pfl_fill(%" PRIu32 ") refused a slot this thread reserved", j);
}

static void op_pop_push(worker *w)
{
    uint32_t held[MAX_HELD];
    int n = 1 + (int)(rnd(w) % MAX_HELD);
    int got = 0;
    for (int k = 0; k < n; k++) {
        uint32_t i = pfl_pop(&fl);
        if (i == PFL_NIL) {
            w->pop_empty++;
            break;
        }
        w->pops++;
        take(w, i, "pfl_pop");
        atomic_store_explicit(&hints[rnd(w) % NHINTS], i, memory_order_relaxed);
        held[got++] = i;
    }
    for (int k = got; k-- > 0;) {
        uint32_t i = held[k];
        hold_briefly(w, i);
        give_up(w, i);
        if (!pfl_push(&fl, i))
            fail("pfl_push(%" PRIu32 ") refused a slot this thread popped", i);
    }
}

static void op_pop_discard(worker *w)
{
    uint32_t i = pfl_pop(&fl);
    if (i == PFL_NIL) {
        w->pop_empty++;
        return;
    }
    w->pops++;
    take(w, i, "pfl_pop");
    hold_briefly(w, i);
    give_up(w, i);
    if (!pfl_discard(&fl, i))
        fail("pfl_discard(%" PRIu32 ") refused a slot this thread popped", i);
    w->discards++;
    refill(w, "pfl_discard");
}

static void op_claim(worker *w)
{
    /* Mostly a slot some thread popped recently (likely IDLE again, maybe
     * held right now), else any slot. */
    uint32_t cap = pfl_capacity(&fl);
    uint32_t r = rnd(w);
    uint32_t i = (r & 3u)
        ? atomic_load_explicit(&hints[(r >> 2) % NHINTS], memory_order_relaxed)
        : (r >> 2) % cap;
    if (!pfl_claim(&fl, i)) {
        w->claim_fail++;
        return;
    }
    w->claims++;
    take(w, i, "pfl_claim");
    if (pfl_state(&fl, i) != PFL_RESERVED)
        fail("slot %" PRIu32 " not RESERVED after pfl_claim", i);
    hold_briefly(w, i);
    give_up(w, i);
    if (rnd(w) & 1u) {
        if (!pfl_unclaim(&fl, i))
            fail("pfl_unclaim(%" PRIu32 ") refused a slot this thread claimed", i);
        w->unclaims++;
    } else {
        if (!pfl_retire(&fl, i))
            fail("pfl_retire(%" PRIu32 ") refused a slot this thread claimed", i);
        w->retires++;
        refill(w, "pfl_retire");
    }
}

static void op_reserve_abandon(worker *w)
{
    uint32_t i = pfl_reserve(&fl);
    if (i == PFL_NIL)
        return;  /* every slot may be filled or in flight: not an error */
    w->reserves++;
    take(w, i, "pfl_reserve");
    hold_briefly(w, i);
    give_up(w, i);
    if (!pfl_abandon(&fl, i))
        fail("pfl_abandon(%" PRIu32 ") refused a slot this thread reserved", i);
    w->abandons++;
}

/* LIFO only: grow concurrently, then sometimes fill one more slot. */
static void op_grow(worker *w)
{
    uint32_t left = atomic_load_explicit(&grow_budget, memory_order_relaxed);
    while (left > 0 &&
           !atomic_compare_exchange_weak_explicit(&grow_budget, &left, left - 1,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
    if (left == 0)
        return;
    if (pfl_grow(&fl) != 0)
        fail("concurrent pfl_grow() failed");
    w->grows++;
    for (uint32_t k = rnd(w) % 4u; k > 0; k--) {
        uint32_t j = pfl_reserve(&fl);
        if (j == PFL_NIL)
            return;  /* the winner of the race may not have pushed its slots yet */
        w->reserves++;
        take(w, j, "pfl_reserve");
        give_up(w, j);
        if (!pfl_fill(&fl, j))
            fail("pfl_fill(%" PRIu32 ") refused a slot this thread reserved", j);
        atomic_fetch_add(&filled, 1);
        w->extra_fills++;
    }
}

static void *run(void *arg)
{
    worker *w = (worker *)arg;
    w->last_now = pfl_now_ns();
    while (!atomic_load(&start_flag))
        ;
    for (long n = 0; n < w->ops; n++) {
        uint32_t r = rnd(w) % 1000u;
        if (r < 550)
            op_pop_push(w);
        else if (r < 650)
            op_pop_discard(w);
        else if (r < 880)
            op_claim(w);
        else if (r < 990)
            op_reserve_abandon(w);
        else
            op_pop_push(w);
        if (w->grow_every && rnd(w) % w->grow_every == 0)
            op_grow(w);
        if ((n & 15) == 0)
            check_clock(w);
    }
    check_clock(w);
    return NULL;
}

/* ------------------------------------------------------------ final check */

static void final_check(void)
{
    uint32_t cap = pfl_capacity(&fl);
    long want_idle = atomic_load(&filled);
    uint32_t *before = calloc(cap, sizeof(uint32_t));
    unsigned char *seen = calloc(cap, 1);
    if (before == NULL || seen == NULL)
        fail("out of memory");

    long n_idle = 0, n_empty = 0;
    for (uint32_t i = 0; i < cap; i++) {
        if (atomic_load(&owner[i]) != -1)
            fail("slot %" PRIu32 " still owned by thread %d after join", i,
                 atomic_load(&owner[i]));
        before[i] = pfl_state(&fl, i);
        if (before[i] == PFL_IDLE)
            n_idle++;
        else if (before[i] == PFL_EMPTY)
            n_empty++;
        else
            fail("slot %" PRIu32 " left in state %" PRIu32 " after join", i, before[i]);
    }
    if (n_idle != want_idle)
        fail("%ld IDLE slots after join, the test filled %ld", n_idle, want_idle);

    long popped = 0;
    uint32_t i;
    while ((i = pfl_pop(&fl)) != PFL_NIL) {
        if (i >= cap)
            fail("final pop returned index %" PRIu32 " outside the list", i);
        if (seen[i])
            fail("index %" PRIu32 " duplicated: popped twice while draining", i);
        seen[i] = 1;
        if (before[i] != PFL_IDLE)
            fail("drain popped slot %" PRIu32 " whose state was %" PRIu32 ", not IDLE",
                 i, before[i]);
        popped++;
    }
    if (popped != want_idle)
        fail("drain popped %ld slots, %ld were filled: %ld lost", popped, want_idle,
             want_idle - popped);

    memset(seen, 0, cap);
    long reserved = 0;
    while ((i = pfl_reserve(&fl)) != PFL_NIL) {
        if (i >= cap)
            fail("final reserve returned index %" PRIu32 " outside the list", i);
        if (seen[i])
            fail("index %" PRIu32 " duplicated on the empty stack", i);
        seen[i] = 1;
        if (before[i] != PFL_EMPTY)
            fail("empty stack held slot %" PRIu32 " whose state was %" PRIu32, i,
                 before[i]);
        reserved++;
    }
    if (reserved != n_empty || reserved != (long)cap - want_idle)
        fail("empty stack held %ld slots, expected %ld", reserved,
             (long)cap - want_idle);
    free(before);
    free(seen);
}

/* ------------------------------------------------------------------ main */

static long parse_long(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) {
        fprintf(stderr, "bad value for %s: %s (%ld..%ld)\n", opt, s, lo, hi);
        exit(1);
    }
    return v;
}

int main(int argc, char **argv)
{
    long nthreads = DEFAULT_THREADS, ops = DEFAULT_OPS, slots = DEFAULT_SLOTS;
    long spare = 1;
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--fifo")) {
            fifo_mode = 1;
        } else if (a + 1 < argc && !strcmp(argv[a], "--threads")) {
            nthreads = parse_long("--threads", argv[++a], 1, 256);
        } else if (a + 1 < argc && !strcmp(argv[a], "--ops")) {
            ops = parse_long("--ops", argv[++a], 1, 1000000000L);
        } else if (a + 1 < argc && !strcmp(argv[a], "--slots")) {
            slots = parse_long("--slots", argv[++a], 1, 100000);
        } else if (a + 1 < argc && !strcmp(argv[a], "--spare")) {
            spare = parse_long("--spare", argv[++a], 0, 64);
        } else if (a + 1 < argc && !strcmp(argv[a], "--seed")) {
            seed = (uint64_t)parse_long("--seed", argv[++a], 0, 0x7fffffffffffffffL);
        } else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--ops M] [--slots S] [--spare K] [--fifo]"
                    " [--seed X]\n",
                    argv[0]);
            return 1;
        }
    }

    if (pfl_init(&fl, fifo_mode) != 0)
        fail("pfl_init failed");
    /* Room for every filled slot plus the spare segments; growth up front is
     * required in FIFO mode.  LIFO mode may add EXTRA_SEGS more while running. */
    uint32_t segs = (uint32_t)((slots + PFL_SEG_SIZE - 1) / PFL_SEG_SIZE + spare);
    for (uint32_t s = 0; s < segs; s++)
        if (pfl_grow(&fl) != 0)
            fail("pfl_grow failed during setup");
    if (pfl_capacity(&fl) != segs * PFL_SEG_SIZE)
        fail("capacity %" PRIu32 " after %" PRIu32 " grows", pfl_capacity(&fl), segs);
    atomic_store(&grow_budget, fifo_mode ? 0u : EXTRA_SEGS);
    max_slots = (segs + EXTRA_SEGS) * PFL_SEG_SIZE;
    owner = malloc(max_slots * sizeof(*owner));
    payload = calloc(max_slots, sizeof(*payload));
    if (owner == NULL || payload == NULL)
        fail("out of memory");
    for (uint32_t i = 0; i < max_slots; i++)
        atomic_init(&owner[i], -1);

    for (long k = 0; k < slots; k++) {
        uint32_t i = pfl_reserve(&fl);
        if (i == PFL_NIL || i >= max_slots || pfl_state(&fl, i) != PFL_CREATING)
            fail("setup: pfl_reserve returned %" PRIu32 " (slot %ld)", i, k);
        if (!pfl_fill(&fl, i))
            fail("setup: pfl_fill(%" PRIu32 ") failed", i);
    }
    atomic_store(&filled, slots);


    worker *ws = calloc((size_t)nthreads, sizeof(worker));
    pthread_t *ts = calloc((size_t)nthreads, sizeof(pthread_t));
    if (ws == NULL || ts == NULL)
        fail("out of memory");
    for (long t = 0; t < nthreads; t++) {
        ws[t].id = (int)t;
        ws[t].ops = ops / nthreads + (t < ops % nthreads ? 1 : 0);
        /* Spread the LIFO growth over the run: ~3 attempts a thread. */
        ws[t].grow_every = fifo_mode ? 0u : (uint32_t)(ws[t].ops / 3 + 1);
        ws[t].rng = (seed + 0x9E3779B97F4A7C15ULL * (uint64_t)(t + 1)) | 1u;
        if (pthread_create(&ts[t], NULL, run, &ws[t]) != 0)
            fail("pthread_create failed");
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    atomic_store(&start_flag, 1);
    for (long t = 0; t < nthreads; t++)
        pthread_join(ts[t], NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);

    final_check();

    worker sum;
    memset(&sum, 0, sizeof(sum));
    for (long t = 0; t < nthreads; t++) {
        sum.pops += ws[t].pops;           sum.pop_empty += ws[t].pop_empty;
        sum.claims += ws[t].claims;       sum.claim_fail += ws[t].claim_fail;
        sum.unclaims += ws[t].unclaims;   sum.retires += ws[t].retires;
        sum.discards += ws[t].discards;   sum.reserves += ws[t].reserves;
        sum.abandons += ws[t].abandons;   sum.grows += ws[t].grows;
        sum.extra_fills += ws[t].extra_fills;
        sum.holds += ws[t].holds;         sum.yields += ws[t].yields;
        sum.refill_waits += ws[t].refill_waits;
    }
    unsigned long payload_sum = 0;
    for (uint32_t i = 0; i < max_slots; i++)
        payload_sum += payload[i];
    if (payload_sum != (unsigned long)sum.holds)
        fail("payload updates lost: %lu recorded, %ld holds", payload_sum, sum.holds);

    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("ok: %s threads=%ld ops=%ld slots=%ld spare=%ld capacity=%" PRIu32 " pops=%ld"
           " pop_empty=%ld claims=%ld claim_miss=%ld unclaims=%ld retires=%ld"
           " discards=%ld reserves=%ld abandons=%ld grows=%ld extra_fills=%ld"
           " filled=%ld refill_waits=%ld seed=%" PRIu64 " seconds=%.2f%s\n",
           fifo_mode ? "fifo" : "lifo", nthreads, ops, slots, spare, pfl_capacity(&fl),
           sum.pops, sum.pop_empty, sum.claims, sum.claim_fail, sum.unclaims,
           sum.retires, sum.discards, sum.reserves, sum.abandons, sum.grows,
           sum.extra_fills, atomic_load(&filled), sum.refill_waits, seed, secs,
#ifdef STRESS_TSAN
           " tsan"
#else
           ""
#endif
    );
    free(ws);
    free(ts);
    free(owner);
    free(payload);
    pfl_destroy(&fl);
    return 0;
}
