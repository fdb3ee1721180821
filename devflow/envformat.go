package devflow

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// Env file formats. No one format is read back exactly by every reader
// (see dotenv), so there are two, named.
const (
	EnvFormatDotenv = "dotenv" // KEY="value", escaped for POSIX shells (set -a; . FILE) and godotenv
	EnvFormatDocker = "docker" // KEY=value, literal, as `docker run --env-file` reads it
)

// renderEnv writes vars in the named format ("" = dotenv).
func renderEnv(format string, vars []EnvVar) []byte {
	if format == EnvFormatDocker {
		return dockerEnv(vars)
	}
	return dotenv(vars)
}

// dockerEnv renders variables as docker's env-file reads them: one
// KEY=value per line, the value taken literally to the end of the line (no
// quotes, no escapes, nothing expanded: docker runs no shell on it). A
// value docker cannot carry — a newline in it — and a name docker would
// misread (empty, with '=' or whitespace, or starting with '#') are left
// out with a comment saying so, rather than written so that docker reads
// something else.
func dockerEnv(vars []EnvVar) []byte {
	var b bytes.Buffer
	for _, v := range vars {
		switch {
		case v.Name == "" || strings.ContainsAny(v.Name, "= \t\r\n") || strings.HasPrefix(v.Name, "#"):
			fmt.Fprintf(&b, "# %s left out: docker cannot read that name\n", strconv.QuoteToASCII(v.Name))
		case strings.ContainsAny(v.Value, "\r\n"):
			fmt.Fprintf(&b, "# %s left out: its value has a line break, which docker's env-file cannot hold\n", v.Name)
		default:
			fmt.Fprintf(&b, "%s=%s\n", v.Name, v.Value)
		}
	}
	return b.Bytes()
}
