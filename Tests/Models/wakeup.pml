/*
 * The wake-up protocol of the ring, both directions, under x86-TSO (docs/wakeup.md).
 *
 * One producer and one consumer share a ring of CAPACITY messages. The consumer sleeps when the
 * ring is empty, the producer when it is full; each side wakes the other. Memory is x86-TSO:
 * every process has a FIFO store buffer; its loads see its own latest buffered store to a
 * variable, else memory; a separate process flushes the oldest entry of a buffer to memory at
 * any time; a fence waits until the buffer is empty. (A sequentially consistent model cannot
 * show the missing-fence bug: it is the store buffer that hides a store from the other side.)
 *
 * The protocol, for the side about to sleep (S) and the side that must wake it (W):
 *   S: e = load(W's wake epoch)           -- the futex word S will sleep on, written only by W
 *      store(waiting, e + 1)              -- "I sleep on epoch e"
 *      membarrier                         -- asymmetric fence: S's buffer drains, and W passes
 *                                            a full barrier while S waits (W's buffer drains)
 *      re-check the condition             -- data (consumer) or space (producer)
 *      if still nothing: futex_wait(epoch, e)
 *   W: store(the data word or cursor)     -- the publish (commit word) or the consumer's cursor
 *      (compiler barrier only)
 *      if load(waiting) == epoch + 1: epoch = epoch + 1; futex_wake(epoch)
 * A system call drains the caller's store buffer (futex_wait, futex_wake, membarrier).
 * futex_wait compares memory with the expected value and queues atomically (as the kernel does
 * under the futex's hash-bucket lock); futex_wake wakes whoever is queued on the word.
 *
 * Mutants (spin -DNO_RECHECK or -DNO_FENCE): each must make Spin report an error.
 *   NO_RECHECK  the sleeper does not look at the condition again after announcing itself
 *   NO_FENCE    the sleeper issues an ordinary full fence (mfence: its own buffer only), so
 *               the waking side has no fence between its store and its load of "waiting"
 *
 * Checked by Tests/ShmRingTests/WakeupModelTests.swift: safety (assertions, no invalid end
 * state: a process asleep for ever, or both asleep, is one) and, with -DNP, no non-progress
 * cycle under weak fairness (every cycle publishes or consumes).
 */

#define CAPACITY 1     /* so that a lost wake-up always ends with both sides asleep */
#ifndef MOD
#define MOD 2          /* counters and epochs modulo MOD, so that the model runs for ever; */
#endif                 /* MOD 3 is checked by hand (docs/wakeup.md) */
#define BUFFER 3       /* store buffer depth */

/* Shared variables (indices into mem). */
#define PUBLISHED 0    /* the producer's commit: messages published, mod MOD */
#define CURSOR 1       /* the consumer's cursor: messages consumed, mod MOD */
#define DATA_EPOCH 2   /* written by the producer: the consumer sleeps on it */
#define SPACE_EPOCH 3  /* written by the consumer: the producer sleeps on it */
#define C_WAITING 4    /* written by the consumer: epoch + 1 it sleeps on, 0 none */
#define P_WAITING 5    /* written by the producer: epoch + 1 it sleeps on, 0 none */
#define VARIABLES 6

byte mem[VARIABLES];

/* Store buffers: 0 = producer, 1 = consumer. */
byte bufVar[2 * BUFFER];
byte bufVal[2 * BUFFER];
byte bufCount[2];

/* Who sleeps on which word: variable + 1, 0 = awake. */
byte sleepingOn[2];

inline store(me, variable, value) {
    atomic {
        bufCount[me] < BUFFER;
        bufVar[me * BUFFER + bufCount[me]] = variable;
        bufVal[me * BUFFER + bufCount[me]] = value;
        bufCount[me]++
    }
}

/* TSO load: the newest buffered store of this process to the variable, else memory. */
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

/* membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED): the caller's own full barrier, then every
   registered running thread (the other side) passes a full barrier before it returns: there is
   a moment during the call when the other side's store buffer is empty. */
inline membarrier(me, other) {
    fence(me);
    bufCount[other] == 0
}

inline futexWait(me, variable, expected) {
    fence(me);
    atomic {
        if
        :: mem[variable] == expected -> sleepingOn[me] = variable + 1
        :: else -> skip
        fi
    };
    sleepingOn[me] == 0
}

inline futexWake(me, other, variable) {
    fence(me);
    atomic {
        if
        :: sleepingOn[other] == variable + 1 -> sleepingOn[other] = 0
        :: else -> skip
        fi
    }
}

/* The sleeper's fence: membarrier, or in the NO_FENCE mutant an ordinary one. */
#ifdef NO_FENCE
#define SLEEPER_FENCE(me, other) fence(me)
#else
#define SLEEPER_FENCE(me, other) membarrier(me, other)
#endif

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
    byte published = 0, cursor, epoch = 0, waiting, spaceEpoch, scan;
    do
    :: load(0, CURSOR, cursor);
        if
        :: (published + MOD - cursor) % MOD < CAPACITY ->
            /* Publish: the commit word, then (compiler barrier only) the sleeper check. */
            published = (published + 1) % MOD;
            store(0, PUBLISHED, published);
progress_publish:
            load(0, C_WAITING, waiting);
            if
            :: waiting == epoch + 1 ->
                epoch = (epoch + 1) % MOD;
                store(0, DATA_EPOCH, epoch);
                futexWake(0, 1, DATA_EPOCH)
            :: else -> skip
            fi
        :: else ->
            /* Full: sleep until the consumer moves its cursor. */
            load(0, SPACE_EPOCH, spaceEpoch);
            store(0, P_WAITING, spaceEpoch + 1);
            SLEEPER_FENCE(0, 1);
#ifndef NO_RECHECK
            load(0, CURSOR, cursor);
            if
            :: (published + MOD - cursor) % MOD < CAPACITY -> skip
            :: else -> futexWait(0, SPACE_EPOCH, spaceEpoch)
            fi
#else
            futexWait(0, SPACE_EPOCH, spaceEpoch)
#endif
        fi
    od
}

proctype Consumer() {
    byte consumed = 0, published, epoch, waiting, spaceEpoch = 0, scan;
    do
    :: load(1, PUBLISHED, published);
        if
        :: published != consumed ->
            /* Read the message, then publish the cursor, then (compiler barrier only) the
               sleeper check of the mirrored direction. */
            consumed = (consumed + 1) % MOD;
            store(1, CURSOR, consumed);
progress_consume:
            load(1, P_WAITING, waiting);
            if
            :: waiting == spaceEpoch + 1 ->
                spaceEpoch = (spaceEpoch + 1) % MOD;
                store(1, SPACE_EPOCH, spaceEpoch);
                futexWake(1, 0, SPACE_EPOCH)
            :: else -> skip
            fi
        :: else ->
            /* Empty: sleep until the producer publishes. */
            load(1, DATA_EPOCH, epoch);
            store(1, C_WAITING, epoch + 1);
            SLEEPER_FENCE(1, 0);
#ifndef NO_RECHECK
            load(1, PUBLISHED, published);
            if
            :: published != consumed -> skip
            :: else -> futexWait(1, DATA_EPOCH, epoch)
            fi
#else
            futexWait(1, DATA_EPOCH, epoch)
#endif
        fi
    od
}

init {
    atomic {
        run Flusher(0);
        run Flusher(1);
        run Producer();
        run Consumer()
    }
}
