//go:build !linux

package main

// snapshotHeapOnSignal is Linux only (SIGUSR1); elsewhere the heap profile
// is written only at exit.
func snapshotHeapOnSignal(string) {}
