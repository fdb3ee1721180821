package vscode

import (
	"fmt"
	"regexp"
)

// task is a tasks.json (version 2.0.0) task, its members in the order VS
// Code's own templates use.
type task struct {
	Label          string        `json:"label"`
	Type           string        `json:"type"`
	Command        string        `json:"command"`
	Args           []string      `json:"args"`
	IsBackground   bool          `json:"isBackground,omitempty"`
	ProblemMatcher any           `json:"problemMatcher"`
	Presentation   *presentation `json:"presentation,omitempty"`
}

type presentation struct {
	Reveal string `json:"reveal"`
	Panel  string `json:"panel"`
}

// problemMatcher is a task's inline problem matcher: VS Code requires a
// pattern (and an owner and file location) of every one, and reads
// background.endsPattern as "the background task is ready", which is
// what lets a preLaunchTask that keeps running start the debugger.
type problemMatcher struct {
	Owner        string         `json:"owner"`
	Source       string         `json:"source"`
	FileLocation string         `json:"fileLocation"`
	Severity     string         `json:"severity"`
	Pattern      problemPattern `json:"pattern"`
	Background   background     `json:"background"`
}

type problemPattern struct {
	Regexp  string `json:"regexp"`
	Kind    string `json:"kind"`
	File    int    `json:"file"`
	Message int    `json:"message"`
}

type background struct {
	ActiveOnStart bool   `json:"activeOnStart"`
	BeginsPattern string `json:"beginsPattern"`
	EndsPattern   string `json:"endsPattern"`
}

// launchConfig is a launch.json (version 0.2.0) configuration.
type launchConfig struct {
	Name          string            `json:"name"`
	Type          string            `json:"type"`
	Request       string            `json:"request"`
	Mode          string            `json:"mode,omitempty"`
	Program       string            `json:"program"`
	EnvFile       string            `json:"envFile"`
	Env           map[string]string `json:"env"`
	Console       string            `json:"console,omitempty"`
	PreLaunchTask string            `json:"preLaunchTask"`
	PostDebugTask string            `json:"postDebugTask"`
}

// Patterns over what `bridgetun intercept SERVICE --env-file F -- CMD`
// prints (devflow.Intercept): first the environment line once the env
// file is written ("environment of POD/CONTAINER resolved (N variables),
// written to F"), then, before it waits for LOCAL to listen, "waiting for
// `CMD` to listen on 127.0.0.1:LOCAL (up to 5m)". The second is the
// moment the debugger may start the program: the env file exists and the
// intercept patches once the program listens. Unanchored, so a terminal's
// colour codes and the "…" symbol before the text do not matter.
const beginsPattern = `environment of \S+ resolved`

func endsPattern(port int) string {
	return fmt.Sprintf(`waiting for .* to listen on 127\.0\.0\.1:%d\b`, port)
}

// envFileError matches intercept's one-line error about the env file
// ("bridgetun: --env-file PATH: why"), which the Problems view then shows
// on that file.
const envFileError = `^bridgetun: --env-file (.+?): (.*)$`

// tasks are the intercept task and the leave task.
func (p plan) tasks() []entry {
	args := []string{"intercept", p.service, "--port", p.port}
	if p.routeAs != "" {
		args = append(args, "--isolate", "--route-as", p.routeAs)
	}
	args = append(args,
		"--env-file", p.envFile(), "--env-format", "docker",
		"--wait", listenWait,
		"--", p.command, HoldCommand)
	intercept := task{
		Label: p.interceptLabel(), Type: "process", Command: p.command, Args: args,
		IsBackground: true,
		ProblemMatcher: problemMatcher{
			Owner: "bridgetun", Source: "bridgetun", FileLocation: "absolute", Severity: "error",
			Pattern:    problemPattern{Regexp: envFileError, Kind: "file", File: 1, Message: 2},
			Background: background{ActiveOnStart: true, BeginsPattern: beginsPattern, EndsPattern: endsPattern(p.localPort)},
		},
		Presentation: &presentation{Reveal: "always", Panel: "dedicated"},
	}
	leave := task{
		Label: p.leaveLabel(), Type: "process", Command: p.command, Args: []string{"leave", p.service},
		ProblemMatcher: []any{},
	}
	return []entry{{intercept.Label, intercept}, {leave.Label, leave}}
}

// launch is the launch configuration for p.language (none for
// LanguageNone).
func (p plan) launch() []entry {
	c := launchConfig{
		Name: p.launchName(), Request: "launch", Program: p.program,
		EnvFile: p.envFile(), Env: map[string]string{"GRPC_DNS_RESOLVER": "native"},
		PreLaunchTask: p.interceptLabel(), PostDebugTask: p.leaveLabel(),
	}
	switch p.language {
	case LanguageGo:
		c.Type, c.Mode = "go", "debug"
	case LanguageNode:
		c.Type = "node"
	case LanguagePython:
		c.Type, c.Console = "debugpy", "integratedTerminal"
	default:
		return nil
	}
	return []entry{{c.Name, c}}
}

// The patterns are JavaScript regular expressions in VS Code; these are
// in the common subset, which Go's regexp checks here.
var (
	_ = regexp.MustCompile(beginsPattern)
	_ = regexp.MustCompile(endsPattern(1))
	_ = regexp.MustCompile(envFileError)
)
