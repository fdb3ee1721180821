package main

import (
	"encoding/json"
	"io"
)

// Machine-readable output: every command with --json prints exactly one
// JSON object on stdout through printJSON, and its steps (if any) on
// stderr; errors stay one line on stderr with exit code 1, --json or not.
// The shapes below are the commands' contracts with scripts.

// exitCodesHelp is the root command's summary of what each command's
// --help says in detail.
const exitCodesHelp = `Exit codes: 0 on success; 1 on failure, the reason in one line on stderr
(with --json too, and stdout then stays empty); intercept and run pass on
the exit code of the command they ran. status --json and down --json with
nothing up are no failure: they print {"state": "down", …} and exit 0.`

// printJSON writes v as indented JSON and a newline.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// versionResult is what version --json prints.
type versionResult struct {
	Version string `json:"version"`
}

// stateResult is status --json with no session up.
type stateResult struct {
	State string `json:"state"` // "down"
}

// downResult is what down --json prints.
type downResult struct {
	State    string   `json:"state"`    // always "down"
	Ended    bool     `json:"ended"`    // a running session was ended
	Repaired []string `json:"repaired"` // what a crashed session left, now undone
}

// leaveResult is what leave --json prints.
type leaveResult struct {
	Service string `json:"service"`
	Result  string `json:"result"` // what became of the workload
}
