/*
 * pypool_freelist.h -- the lock-free part of pypool's native core.
 *
 * Plain C11, no Python: the extension (src/_corepool.pyx) includes it, and
 * tests/c/stress_freelist.c drives it from many threads under ThreadSanitizer.
 *
 * What it holds
 * -------------
 * Slots are numbered 0 .. capacity-1 and live in fixed-size segments that are
 * never moved or freed before pfl_destroy(), so a slot index stays valid while
 * the list grows.  Each slot has one atomic word:
 *
 *     bits 0-2   the slot state (PFL_EMPTY, PFL_CREATING, PFL_IDLE, PFL_BUSY,
 *                PFL_RESERVED)
 *     bit  3     PFL_LISTED: the slot's index sits in the idle list (or is
 *                being pushed onto it)
 *
 * and two links, one for each list an index can sit in.
 *
 * The idle list is either a Treiber stack (most recently returned first) or a
 * bounded MPMC ring (first returned, first reused).  An index enters the idle
 * list only when a slot turns IDLE while PFL_LISTED is clear, and the bit is
 * set in the same compare-and-swap, so an index is never in the list twice.
 * A popper clears PFL_LISTED in the same compare-and-swap that takes the slot
 * (IDLE|LISTED -> BUSY); if the slot is no longer IDLE (the maintenance worker
 * claimed or retired it while it sat in the list) the popper only clears the
 * bit and drops the stale index: whoever makes the slot IDLE again lists it
 * anew.  This is how claim() takes one specific idle slot without searching
 * the list, and it is why a slot is handed out only through its state word,
 * never through list membership alone.
 *
 * EMPTY slots sit on a second Treiber stack (the empty stack), from which
 * pfl_reserve() takes them; new segments put their slots there.
 *
 * ABA: both stacks use a head of (32-bit tag << 32 | 32-bit index); every
 * successful pop or push bumps the tag.
 *
 * Concurrency contract
 * --------------------
 * Every function may run concurrently with every other on the same list,
 * except pfl_init(), pfl_destroy() and the ring's growth inside pfl_grow() in
 * FIFO mode (which moves the ring): in FIFO mode pfl_grow() needs the list to
 * itself.  The extension calls everything with the GIL held, which gives it
 * that; the stress program grows the list before it starts its threads.
 */
#ifndef PYPOOL_FREELIST_H
#define PYPOOL_FREELIST_H

/* clock_gettime() under a strict -std=c11 (Python.h, when included first,
 * has made the same request already). */
#if !defined(_WIN32) && !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdatomic.h>
#include <time.h>

#if defined(_WIN32)
#  ifndef WIN32_LEAN_AND_MEAN
#    define WIN32_LEAN_AND_MEAN
#  endif
#  include <windows.h>
#else
#  include <sched.h>
#endif

#define PFL_NIL        0xFFFFFFFFu
#define PFL_SEG_SHIFT  6u
#define PFL_SEG_SIZE   (1u << PFL_SEG_SHIFT)          /* 64 slots a segment */
#define PFL_MAX_SEGS   4096u
#define PFL_MAX_SLOTS  (PFL_SEG_SIZE * PFL_MAX_SEGS)   /* 262144 */

#define PFL_EMPTY      0u
#define PFL_CREATING   1u
#define PFL_IDLE       2u
#define PFL_BUSY       3u
#define PFL_RESERVED   4u
#define PFL_STATE_MASK 7u
#define PFL_LISTED     8u

typedef struct {
    _Atomic uint32_t word;   /* state | PFL_LISTED */
    _Atomic uint32_t next;   /* idle stack link */
    _Atomic uint32_t enext;  /* empty stack link */
} pfl_link;

typedef struct {
    _Atomic uint64_t seq;
    _Atomic uint32_t value;
} pfl_cell;

typedef struct {
    _Atomic(pfl_link *) segs[PFL_MAX_SEGS];
    _Atomic uint32_t nsegs;
    _Atomic uint64_t idle_head;   /* LIFO mode: tag << 32 | index */
    _Atomic uint64_t empty_head;  /* tag << 32 | index */
    /* FIFO mode: Vyukov's bounded MPMC ring, capacity >= number of slots. */
    int fifo;
    pfl_cell *ring;
    uint64_t ring_mask;
    _Atomic uint64_t enq_pos;
    _Atomic uint64_t deq_pos;
} pfl_list;

/* ------------------------------------------------------------------ clock */

/* A cheap monotonic clock in nanoseconds.  Coarse (a few ms) where the system
 * offers a coarse clock: the pool's policies work in milliseconds. */
static inline int64_t pfl_now_ns(void)
{
#if defined(_WIN32)
    return (int64_t)GetTickCount64() * 1000000;
#else
    struct timespec ts;
#  if defined(CLOCK_MONOTONIC_COARSE)
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#  else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#  endif
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* A precise monotonic clock in nanoseconds (the same base as Python's
 * time.monotonic() on Linux and macOS), for waits. */
static inline int64_t pfl_monotonic_ns(void)
{
#if defined(_WIN32)
    static LARGE_INTEGER freq;
    LARGE_INTEGER now;
    if (freq.QuadPart == 0)
        QueryPerformanceFrequency(&freq);
    QueryPerformanceCounter(&now);
    return (int64_t)((double)now.QuadPart * 1e9 / (double)freq.QuadPart);
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

/* Gives the processor to another ready thread, if there is one. */
static inline void pfl_yield(void)
{
#if defined(_WIN32)
    SwitchToThread();
#else
    sched_yield();
#endif
}

/* ------------------------------------------------------------------ slots */

static inline pfl_link *pfl__link(pfl_list *fl, uint32_t i)
{
    pfl_link *seg = atomic_load_explicit(&fl->segs[i >> PFL_SEG_SHIFT],
                                         memory_order_acquire);
    return &seg[i & (PFL_SEG_SIZE - 1u)];
}

static inline uint32_t pfl_capacity(pfl_list *fl)
{
    return atomic_load_explicit(&fl->nsegs, memory_order_acquire) * PFL_SEG_SIZE;
}

static inline uint32_t pfl_state(pfl_list *fl, uint32_t i)
{
    return atomic_load_explicit(&pfl__link(fl, i)->word, memory_order_acquire)
           & PFL_STATE_MASK;
}

/* ---------------------------------------------------------- tagged stacks */

static inline uint64_t pfl__tagged(uint64_t old, uint32_t index)
{
    return (((old >> 32) + 1u) << 32) | (uint64_t)index;
}

static inline void pfl__stack_push(pfl_list *fl, _Atomic uint64_t *head,
                                   int empty_links, uint32_t i)
{
    pfl_link *l = pfl__link(fl, i);
    _Atomic uint32_t *link = empty_links ? &l->enext : &l->next;
    uint64_t h = atomic_load_explicit(head, memory_order_relaxed);
    for (;;) {
        atomic_store_explicit(link, (uint32_t)h, memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(
                head, &h, pfl__tagged(h, i),
                memory_order_release, memory_order_relaxed))
            return;
    }
}

static inline uint32_t pfl__stack_pop(pfl_list *fl, _Atomic uint64_t *head,
                                      int empty_links)
{
    uint64_t h = atomic_load_explicit(head, memory_order_acquire);
    for (;;) {
        uint32_t i = (uint32_t)h;
        if (i == PFL_NIL)
            return PFL_NIL;
        pfl_link *l = pfl__link(fl, i);
        /* May read a link that a concurrent pop/push has already changed;
         * the tag makes the compare-and-swap below fail in that case. */
        uint32_t next = atomic_load_explicit(empty_links ? &l->enext : &l->next,
                                             memory_order_relaxed);
        if (atomic_compare_exchange_weak_explicit(
                head, &h, pfl__tagged(h, next),
                memory_order_acquire, memory_order_acquire))
            return i;
    }
}

/* ------------------------------------------------------------------ ring */

static inline void pfl__ring_push(pfl_list *fl, uint32_t value)
{
    uint64_t pos = atomic_load_explicit(&fl->enq_pos, memory_order_relaxed);
    pfl_cell *cell;
    for (;;) {
        cell = &fl->ring[pos & fl->ring_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(
                    &fl->enq_pos, &pos, pos + 1,
                    memory_order_relaxed, memory_order_relaxed))
                break;
        } else {
            /* dif < 0 would mean a full ring, which cannot happen: the ring
             * holds at least as many cells as there are slots and an index
             * is listed at most once.  dif > 0: another pusher won. */
            pos = atomic_load_explicit(&fl->enq_pos, memory_order_relaxed);
        }
    }
    atomic_store_explicit(&cell->value, value, memory_order_relaxed);
    atomic_store_explicit(&cell->seq, pos + 1, memory_order_release);
}

static inline uint32_t pfl__ring_pop(pfl_list *fl)
{
    uint64_t pos = atomic_load_explicit(&fl->deq_pos, memory_order_relaxed);
    pfl_cell *cell;
    for (;;) {
        cell = &fl->ring[pos & fl->ring_mask];
        uint64_t seq = atomic_load_explicit(&cell->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - (pos + 1));
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(
                    &fl->deq_pos, &pos, pos + 1,
                    memory_order_relaxed, memory_order_relaxed))
                break;
        } else if (dif < 0) {
            /* Empty, or a push is half done: report empty.  The pusher's
             * caller wakes a waiter after the push completes. */
            return PFL_NIL;
        } else {
            pos = atomic_load_explicit(&fl->deq_pos, memory_order_relaxed);
        }
    }
    uint32_t value = atomic_load_explicit(&cell->value, memory_order_relaxed);
    atomic_store_explicit(&cell->seq, pos + fl->ring_mask + 1, memory_order_release);
    return value;
}

/* Exclusive access required (see the contract at the top). */
static inline int pfl__ring_resize(pfl_list *fl, uint64_t cells)
{
    pfl_cell *ring = (pfl_cell *)calloc((size_t)cells, sizeof(pfl_cell));
    if (ring == NULL)
        return -1;
    uint64_t n = 0;
    if (fl->ring != NULL) {
        uint32_t v;
        while ((v = pfl__ring_pop(fl)) != PFL_NIL) {
            atomic_store_explicit(&ring[n].value, v, memory_order_relaxed);
            atomic_store_explicit(&ring[n].seq, n + 1, memory_order_relaxed);
            n++;
        }
        free(fl->ring);
    }
    for (uint64_t k = n; k < cells; k++)
        atomic_store_explicit(&ring[k].seq, k, memory_order_relaxed);
    fl->ring = ring;
    fl->ring_mask = cells - 1;
    atomic_store_explicit(&fl->deq_pos, 0, memory_order_relaxed);
    atomic_store_explicit(&fl->enq_pos, n, memory_order_release);
    return 0;
}

/* ------------------------------------------------------------- lifecycle */

static inline int pfl_init(pfl_list *fl, int fifo)
{
    memset((void *)fl, 0, sizeof(*fl));
    atomic_store(&fl->idle_head, (uint64_t)PFL_NIL);
    atomic_store(&fl->empty_head, (uint64_t)PFL_NIL);
    fl->fifo = fifo ? 1 : 0;
    if (fl->fifo)
        return pfl__ring_resize(fl, PFL_SEG_SIZE);
    return 0;
}

static inline void pfl_destroy(pfl_list *fl)
{
    uint32_t n = atomic_load(&fl->nsegs);
    for (uint32_t s = 0; s < n; s++)
        free((void *)atomic_load(&fl->segs[s]));
    free(fl->ring);
    memset((void *)fl, 0, sizeof(*fl));
}

/* Adds one segment of EMPTY slots (on the empty stack).  Returns 0, or -1
 * when memory or the maximum number of segments ran out.  Safe to call
 * concurrently in LIFO mode: a caller that loses the race frees its segment
 * and returns 0 (someone else grew the list). */
static inline int pfl_grow(pfl_list *fl)
{
    uint32_t n = atomic_load_explicit(&fl->nsegs, memory_order_acquire);
    if (n >= PFL_MAX_SEGS)
        return -1;
    if (fl->fifo && (uint64_t)(n + 1u) * PFL_SEG_SIZE > fl->ring_mask + 1) {
        if (pfl__ring_resize(fl, (fl->ring_mask + 1) * 2) != 0)
            return -1;
    }
    pfl_link *seg = (pfl_link *)calloc(PFL_SEG_SIZE, sizeof(pfl_link));
    if (seg == NULL)
        return -1;
    pfl_link *expected = NULL;
    if (!atomic_compare_exchange_strong(&fl->segs[n], &expected, seg)) {
        free(seg);
        return 0;
    }
    atomic_store_explicit(&fl->nsegs, n + 1, memory_order_release);
    /* Push in reverse so that the lowest index is reserved first. */
    for (uint32_t k = PFL_SEG_SIZE; k-- > 0;)
        pfl__stack_push(fl, &fl->empty_head, 1, n * PFL_SEG_SIZE + k);
    return 0;
}

/* -------------------------------------------------------- state changes */

static inline void pfl__list_push(pfl_list *fl, uint32_t i)
{
    if (fl->fifo)
        pfl__ring_push(fl, i);
    else
        pfl__stack_push(fl, &fl->idle_head, 0, i);
}

/* from -> to, keeping PFL_LISTED as it is.  Returns 1 when the slot was in
 * state `from`, else 0 (and changes nothing). */
static inline int pfl_move(pfl_list *fl, uint32_t i, uint32_t from, uint32_t to)
{
    pfl_link *l = pfl__link(fl, i);
    uint32_t w = atomic_load_explicit(&l->word, memory_order_acquire);
    for (;;) {
        if ((w & PFL_STATE_MASK) != from)
            return 0;
        if (atomic_compare_exchange_weak_explicit(
                &l->word, &w, (w & PFL_LISTED) | to,
                memory_order_acq_rel, memory_order_acquire))
            return 1;
    }
}

/* from -> IDLE, listing the index unless it is listed already. */
static inline int pfl_make_idle(pfl_list *fl, uint32_t i, uint32_t from)
{
    pfl_link *l = pfl__link(fl, i);
    uint32_t w = atomic_load_explicit(&l->word, memory_order_acquire);
    for (;;) {
        if ((w & PFL_STATE_MASK) != from)
            return 0;
        if (atomic_compare_exchange_weak_explicit(
                &l->word, &w, PFL_IDLE | PFL_LISTED,
                memory_order_acq_rel, memory_order_acquire))
            break;
    }
    if (!(w & PFL_LISTED))
        pfl__list_push(fl, i);
    return 1;
}

/* from -> EMPTY, onto the empty stack. */
static inline int pfl_make_empty(pfl_list *fl, uint32_t i, uint32_t from)
{
    if (!pfl_move(fl, i, from, PFL_EMPTY))
        return 0;
    pfl__stack_push(fl, &fl->empty_head, 1, i);
    return 1;
}

/* --------------------------------------------------------- the hot path */

/* Takes an idle slot (IDLE -> BUSY) and returns its index, or PFL_NIL. */
static inline uint32_t pfl_pop(pfl_list *fl)
{
    for (;;) {
        uint32_t i = fl->fifo ? pfl__ring_pop(fl)
                              : pfl__stack_pop(fl, &fl->idle_head, 0);
        if (i == PFL_NIL)
            return PFL_NIL;
        pfl_link *l = pfl__link(fl, i);
        uint32_t w = atomic_load_explicit(&l->word, memory_order_acquire);
        for (;;) {
            /* The index came off the list: PFL_LISTED goes in the same step.
             * Only an IDLE slot is taken; anything else is a stale index
             * (claimed or retired while listed), dropped. */
            int take = (w == (PFL_IDLE | PFL_LISTED));
            uint32_t nw = take ? PFL_BUSY : (w & ~PFL_LISTED);
            if (atomic_compare_exchange_weak_explicit(
                    &l->word, &w, nw, memory_order_acq_rel, memory_order_acquire)) {
                if (take)
                    return i;
                break;
            }
        }
    }
}

/* BUSY -> IDLE and back on the idle list. */
static inline int pfl_push(pfl_list *fl, uint32_t i)
{
    return pfl_make_idle(fl, i, PFL_BUSY);
}

/* ------------------------------------------------------- the slow paths */

/* Takes an EMPTY slot (-> CREATING) and returns its index, or PFL_NIL when
 * none is empty (the caller decides whether to pfl_grow()). */
static inline uint32_t pfl_reserve(pfl_list *fl)
{
    for (;;) {
        uint32_t i = pfl__stack_pop(fl, &fl->empty_head, 1);
        if (i == PFL_NIL)
            return PFL_NIL;
        if (pfl_move(fl, i, PFL_EMPTY, PFL_CREATING))
            return i;
        /* Unreachable: an index is on the empty stack only while EMPTY. */
    }
}

static inline int pfl_fill(pfl_list *fl, uint32_t i)    { return pfl_make_idle(fl, i, PFL_CREATING); }
static inline int pfl_abandon(pfl_list *fl, uint32_t i) { return pfl_make_empty(fl, i, PFL_CREATING); }
static inline int pfl_discard(pfl_list *fl, uint32_t i) { return pfl_make_empty(fl, i, PFL_BUSY); }
static inline int pfl_claim(pfl_list *fl, uint32_t i)   { return pfl_move(fl, i, PFL_IDLE, PFL_RESERVED); }
static inline int pfl_unclaim(pfl_list *fl, uint32_t i) { return pfl_make_idle(fl, i, PFL_RESERVED); }
static inline int pfl_retire(pfl_list *fl, uint32_t i)  { return pfl_make_empty(fl, i, PFL_RESERVED); }

#endif /* PYPOOL_FREELIST_H */
