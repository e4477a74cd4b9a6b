/*
 * The doorbell shared by several sleeping consumers (docs/wakeup.md), under x86-TSO: one
 * producer publishes MESSAGES messages; two consumers read them all, sleeping when there is
 * nothing to read. Each consumer announces the epoch it sleeps on in one shared word
 * (`data_waiting`) by compare-and-swap, following RingConsumer.announce: raise a value that is
 * behind; a value ahead is either a newer epoch (then the epoch moved since it was read: do not
 * sleep, poll) or a stray value (the epoch did not move: overwrite it). The producer wakes when
 * the word equals its epoch + 1 (RingWriter.wakeSleepersIfAny). wakeup.pml has the store
 * buffers, membarrier and futex explained; this model reuses them.
 *
 * Waking many (docs/wakeup.md, "Waking many"): the producer wakes one sleeper (FUTEX_WAKE of
 * 1), after a full fence between its epoch store and its look at the doorbell's `sleepers`
 * count; when the count says more than one sleeps, it leaves the epoch in `pass_on`, and the
 * first consumer back from a sleep that takes it (compare-and-swap to 0) wakes every sleeper
 * (Sleeper.passWakeOn). Each consumer adds itself to `sleepers` (a locked instruction) before its
 * futex wait and takes itself out after.
 *
 * Checked: every run ends with both consumers having read every message (an invalid end state is
 * a consumer asleep for ever). Mutants, each of which must fail:
 * - spin -DNAIVE_ANNOUNCE: a consumer overwrites any value ahead of its own epoch + 1 without
 *   looking at the epoch again: a consumer with a stale epoch then lowers another's announcement
 *   of a newer epoch, and that one sleeps through a message;
 * - spin -DNO_PASS_ON: the woken consumer does not pass the wake on;
 * - spin -DNO_COUNT_FENCE: no fence between the producer's epoch store and its look at the count.
 * Epochs and counts do not wrap here (bounded run).
 */

#define MESSAGES 2
#define BUFFER 2
#define CONSUMERS 2

#define PUBLISHED 0
#define DATA_EPOCH 1
#define WAITING 2
#define SLEEPERS 3
#define PASS_ON 4
#define VARIABLES 5

byte mem[VARIABLES];
/* Store buffers: 0 = producer, 1 and 2 = consumers. */
byte bufVar[3 * BUFFER];
byte bufVal[3 * BUFFER];
byte bufCount[3];
/* Who sleeps on DATA_EPOCH (1) or not (0). */
bool asleep[3];
byte consumed[3];

inline store(me, variable, value) {
    atomic {
        bufCount[me] < BUFFER;
        bufVar[me * BUFFER + bufCount[me]] = variable;
        bufVal[me * BUFFER + bufCount[me]] = value;
        bufCount[me]++
    }
}

inline load(me, variable, result) {
    atomic {
        result = mem[variable];
        scan = 0;
        do
        :: scan < bufCount[me] ->
            if
            :: bufVar[me * BUFFER + scan] == variable -> result = bufVal[me * BUFFER + scan]
            :: else -> skip
            fi;
            scan++
        :: else -> break
        od;
        scan = 0
    }
}

inline fence(me) { bufCount[me] == 0 }

/* A locked add: drains the caller's buffer, then works on memory atomically. */
inline lockedAdd(me, variable, delta) {
    fence(me);
    atomic { mem[variable] = mem[variable] + delta }
}

/* FUTEX_WAKE of every sleeper. */
inline wakeAll() {
    atomic {
        c = 1;
        do
        :: c <= CONSUMERS -> asleep[c] = false; c++
        :: else -> break
        od;
        c = 0
    }
}

/* A locked compare-and-swap: drains the caller's buffer, then works on memory atomically. */
inline compareAndSwap(me, variable, expected, desired, swapped) {
    fence(me);
    atomic {
        if
        :: mem[variable] == expected -> mem[variable] = desired; swapped = true
        :: else -> expected = mem[variable]; swapped = false
        fi
    }
}

proctype Flusher(byte me) {
    byte i;
end:
    do
    :: atomic {
        bufCount[me] > 0 ->
        mem[bufVar[me * BUFFER]] = bufVal[me * BUFFER];
        i = 0;
        do
        :: i + 1 < bufCount[me] ->
            bufVar[me * BUFFER + i] = bufVar[me * BUFFER + i + 1];
            bufVal[me * BUFFER + i] = bufVal[me * BUFFER + i + 1];
            i++
        :: else -> break
        od;
        bufCount[me]--;
        i = 0
    }
    od
}

proctype Producer() {
    byte published = 0, epoch = 0, waiting, sleepers, scan, c;
    do
    :: published == MESSAGES -> break
    :: else ->
        published++;
        store(0, PUBLISHED, published);
        /* compiler barrier only */
        load(0, WAITING, waiting);
        if
        :: waiting == epoch + 1 ->
            epoch++;
            store(0, DATA_EPOCH, epoch);
#ifndef NO_COUNT_FENCE
            fence(0);  /* the seq_cst fence in RingWriter.wakeSleepers */
#endif
            load(0, SLEEPERS, sleepers);
            if
            :: sleepers > 1 -> store(0, PASS_ON, epoch)
            :: else -> skip
            fi;
            fence(0);  /* FUTEX_WAKE is a system call */
            /* FUTEX_WAKE of one sleeper, any one (none if nobody sleeps). */
            atomic {
                if
                :: asleep[1] -> asleep[1] = false
                :: asleep[2] -> asleep[2] = false
                :: !asleep[1] && !asleep[2] -> skip
                fi
            }
        :: else -> skip
        fi
    od
}

proctype Consumer(byte me) {
    byte published, epoch, fresh, current, token, passOn, scan, c;
    bool swapped, announced;
    do
    :: consumed[me] == MESSAGES -> break
    :: else ->
        load(me, PUBLISHED, published);
        if
        :: published > consumed[me] -> consumed[me]++
        :: else ->
            load(me, DATA_EPOCH, epoch);
            /* Announce (RingConsumer.announce). */
            load(me, WAITING, current);
            announced = false;
            do
            :: current == epoch + 1 -> announced = true; break
            :: else ->
#ifndef NAIVE_ANNOUNCE
                if
                :: current != 0 && current > epoch + 1 ->
                    load(me, DATA_EPOCH, fresh);
                    if
                    :: fresh != epoch -> break  /* a wake happened: poll */
                    :: else -> skip
                    fi
                :: else -> skip
                fi;
#endif
                compareAndSwap(me, WAITING, current, epoch + 1, swapped);
                if
                :: swapped -> announced = true; break
                :: else -> skip
                fi
            od;
            if
            :: announced ->
                /* membarrier: own buffer, then a moment when the producer's is empty. */
                fence(me);
                bufCount[0] == 0;
                load(me, PUBLISHED, published);
                if
                :: published > consumed[me] -> skip
                :: else ->
                    lockedAdd(me, SLEEPERS, 1);  /* Sleeper.joinSleepers */
                    fence(me);  /* FUTEX_WAIT is a system call */
                    atomic {
                        if
                        :: mem[DATA_EPOCH] == epoch -> asleep[me] = true
                        :: else -> skip
                        fi
                    };
                    asleep[me] == false;
                    lockedAdd(me, SLEEPERS, 255);  /* Sleeper.leaveSleepers (-1, modulo 256) */
#ifndef NO_PASS_ON
                    /* Sleeper.passWakeOn */
                    load(me, DATA_EPOCH, token);
                    load(me, PASS_ON, passOn);
                    if
                    :: token != 0 && passOn == token ->
                        compareAndSwap(me, PASS_ON, token, 0, swapped);
                        if
                        :: swapped -> fence(me); wakeAll()
                        :: else -> skip
                        fi
                    :: else -> skip
                    fi
#endif
                fi
            :: else -> skip
            fi
        fi
    od
}

init {
    atomic {
        run Flusher(0);
        run Flusher(1);
        run Flusher(2);
        run Producer();
        run Consumer(1);
        run Consumer(2)
    }
}
