package main

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"syscall"
)

// snapshotHeapOnSignal writes, each time the process gets SIGUSR1 (N
// counting from 1): path.N.goroutines (where every goroutine waits),
// path.N (the heap after one GC: what is held plus what sync.Pools keep
// idle) and path.N.live (after a second GC, which empties the pools: only
// what is held). bench/scale signals it late in each phase when it asks
// for a heap profile. path "" = off.
func snapshotHeapOnSignal(path string) {
	if path == "" {
		return
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	go func() { // lives as long as the process: it only writes files
		for n := 1; ; n++ {
			<-sig
			writeProfile("goroutine", fmt.Sprintf("%s.%d.goroutines", path, n), 1)
			runtime.GC()
			writeProfile("heap", fmt.Sprintf("%s.%d", path, n), 0)
			runtime.GC()
			writeProfile("heap", fmt.Sprintf("%s.%d.live", path, n), 0)
		}
	}()
}

// writeProfile writes the named runtime/pprof profile to file.
func writeProfile(name, file string, debug int) {
	f, err := os.Create(file)
	if err == nil {
		err = pprof.Lookup(name).WriteTo(f, debug)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bridgetun-agent: %s snapshot %s: %v\n", name, file, err)
	}
}
