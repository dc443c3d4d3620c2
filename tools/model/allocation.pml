/*
 * The multi-clone allocation of udm's bioset (BioSet.allocateMany), as a model for spin.
 *
 * N threads share a pool of P clones; each repeatedly needs K clones at once (a flush,
 * discard or write-zeroes sent to K stripes), uses them and gives them back. Taking one clone
 * either waits until one is free or, in "no wait" mode, fails at once if none is.
 *
 * Default: the discipline. First take all K without waiting; if one fails, give back what
 * was taken, take the allocation mutex, take all K waiting, release the mutex. Only the
 * mutex holder can wait while holding part of a set, so someone can always finish.
 * With -DNAIVE: take the K clones one by one, waiting on each. Two threads can then each hold
 * part of a set and wait for the rest forever: spin reports an invalid end state.
 */
#ifndef N
#define N 3
#endif
#ifndef P
#define P 2
#endif
#ifndef K
#define K 2
#endif

byte free = P;
bool allocationMutex = false;

/* Take one clone, waiting until one is free. */
inline takeWaiting() {
    atomic { free > 0 -> free--; held++ }
}

proctype thread() {
    byte held = 0;
    do
    :: true ->
#ifdef NAIVE
        do
        :: held < K -> takeWaiting()
        :: else -> break
        od;
#else
        /* pass 1: without waiting */
        do
        :: held < K ->
            if
            :: atomic { free > 0 -> free--; held++ }
            :: atomic { free == 0 -> free = free + held; held = 0 }; goto mutexPass
            fi
        :: else -> goto gotAll
        od;
mutexPass:
        /* pass 2: under the mutex, waiting */
        atomic { !allocationMutex -> allocationMutex = true };
        do
        :: held < K -> takeWaiting()
        :: else -> break
        od;
        allocationMutex = false;
gotAll:
#endif
        assert(held == K);
        /* the clones are mapped, complete, and go back to the pool */
        atomic { free = free + held; held = 0 }
    od
}

init {
    byte i;
    atomic {
        for (i : 1 .. N) { run thread() }
    }
}
