// Command bridgetun-agent is bridgetun's in-cluster side: the gateway that
// terminates workstation tunnels, and the intercept sidecar.
package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/internal/version"
)

// cpuProfileEnv names a file for a CPU profile of the whole run, written
// when the agent exits normally (bench/dataplane -profile sets it).
const cpuProfileEnv = "BRIDGETUN_CPUPROFILE"

// heapProfileEnv names a file for a heap profile written when the agent
// exits normally: where the run's allocations came from (alloc_space) and
// what it still held (inuse_space). bench/scale sets it.
const heapProfileEnv = "BRIDGETUN_HEAPPROFILE"

// traceEnv names a file for an execution trace of the whole run, written
// when the agent exits normally: goroutine wake-ups and scheduler latency
// on the packet path (go tool trace -pprof=sched).
const traceEnv = "BRIDGETUN_TRACE"

func main() {
	stop := startCPUProfile(os.Getenv(cpuProfileEnv))
	stopTrace := startTrace(os.Getenv(traceEnv))
	snapshotHeapOnSignal(os.Getenv(heapProfileEnv))
	err := newRootCmd().Execute()
	stopTrace()
	stop()
	writeHeapProfile(os.Getenv(heapProfileEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, "bridgetun-agent:", err)
		os.Exit(1)
	}
}

// startCPUProfile profiles into path ("" = off) until the returned stop.
func startCPUProfile(path string) (stop func()) {
	return startRecording(cpuProfileEnv, path, pprof.StartCPUProfile, pprof.StopCPUProfile)
}

// startTrace traces into path ("" = off) until the returned stop.
func startTrace(path string) (stop func()) {
	return startRecording(traceEnv, path, trace.Start, trace.Stop)
}

// startRecording runs start on a new file at path (named by env, for the
// error) until the returned stop; "" or a failure records nothing.
func startRecording(env, path string, start func(io.Writer) error, end func()) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = start(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bridgetun-agent: %s=%s: %v\n", env, path, err)
		return func() {}
	}
	return func() { end(); f.Close() }
}

// writeHeapProfile writes the heap profile to path ("" = off).
func writeHeapProfile(path string) {
	if path == "" {
		return
	}
	// The profile is as of the last GC; a run that ended without one
	// (a heap goal far above what is live) would miss its last phase.
	runtime.GC()
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup("allocs").WriteTo(f, 0)
		f.Close()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bridgetun-agent: %s=%s: %v\n", heapProfileEnv, path, err)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "bridgetun-agent",
		Short: "bridgetun's in-cluster agent (gateway and sidecar)",
		Long: `bridgetun-agent runs inside the cluster. "gateway" terminates the WireGuard
tunnels of workstations, forwards their flows to real pod and service IPs, and
relays intercepted connections back into them. "init" (an init container with
NET_ADMIN) and "sidecar" are what an intercept adds to a workload's pods.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newGatewayCmd())
	root.AddCommand(newSidecarCmd(), newInitCmd())
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the agent version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "bridgetun-agent", version.Version)
		},
	})
	return root
}
