// Package vscode writes a VS Code workspace's tasks and launch
// configuration for debugging a local copy of a Service under a bridgetun
// intercept: a background task that holds the intercept while the
// debugger runs the program, a task that leaves, and a launch
// configuration with the pod's environment that runs the one before and
// the other after the debug session. It merges into the user's files (JSON
// with comments, as VS Code reads them) and never touches their own
// entries.
package vscode

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Config is one Service's debugging setup in one workspace.
type Config struct {
	Service string // the Service to intercept (a DNS label); required
	// Port is intercept's LOCAL[:REMOTE]: LOCAL is where the debugged
	// program listens; required.
	Port     string
	Language string // LanguageGo, LanguageNode, LanguagePython, LanguageNone; "" = guessed from Program, then the workspace
	Program  string // what the debugger runs, relative to Dir or absolute; "" = the language's default
	RouteAs  string // "" = all of the Service's traffic; else only requests with kubernetes-route-as: RouteAs (--isolate)
	Dir      string // the workspace folder; "" = the working directory
	Command  string // how the tasks call bridgetun; "" = "bridgetun" (from PATH)
}

// Languages a launch configuration is written for.
const (
	LanguageGo     = "go"     // the Go extension's delve ("type": "go")
	LanguageNode   = "node"   // VS Code's JavaScript debugger ("type": "node")
	LanguagePython = "python" // the Python Debugger extension ("type": "debugpy")
	LanguageNone   = "none"   // tasks only: add preLaunchTask/postDebugTask/envFile to your own configuration
)

// Listen budget: how long the intercept task waits for the debugged
// program to listen on LOCAL (a first delve build can take a while).
const listenWait = "5m"

// HoldCommand is the bridgetun subcommand the intercept task runs as its
// `-- CMD`: it only waits, so that the intercept lasts while the debugger,
// not bridgetun, runs the program, and ends when the intercept does.
const HoldCommand = "vscode-hold"

// Change is what Write did to one file.
type Change struct {
	Path    string // the file
	Written bool   // false: it said so already
}

// Write merges Config's tasks into Dir/.vscode/tasks.json and its launch
// configuration into Dir/.vscode/launch.json (each created if missing),
// and makes Dir/.vscode/bridgetun/ for the pod's environment file (with a
// .gitignore, since it holds the pod's Secrets, and an empty file 0600:
// VS Code runs the preLaunchTask before the debug extension's
// resolveDebugConfigurationWithSubstitutedVariables, where the Go extension
// reads envFile, but an extension reading it earlier still finds a file).
// A second Write with the same
// Config writes nothing. Nothing is written unless every file could be
// merged; a failed write puts back what was written before it.
func Write(cfg Config) ([]Change, error) {
	p, err := resolve(cfg)
	if err != nil {
		return nil, err
	}
	vsdir := filepath.Join(p.dir, ".vscode")
	files := []struct {
		path                    string
		version, listKey, idKey string
		entries                 []entry
	}{
		{filepath.Join(vsdir, "tasks.json"), "2.0.0", "tasks", "label", p.tasks()},
		{filepath.Join(vsdir, "launch.json"), "0.2.0", "configurations", "name", p.launch()},
	}
	var plan []fileWrite
	for _, f := range files {
		if len(f.entries) == 0 {
			continue
		}
		old, err := os.ReadFile(f.path)
		existed := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", f.path, err)
		}
		out, changed, err := merge(old, f.version, f.listKey, f.idKey, f.entries)
		if err != nil {
			return nil, fmt.Errorf("%s %w: fix it, or move it away and run again", f.path, err)
		}
		plan = append(plan, fileWrite{path: f.path, data: out, old: old, existed: existed, changed: changed})
	}
	envDir := filepath.Join(vsdir, "bridgetun")
	plan = append(plan,
		fileWrite{path: filepath.Join(envDir, ".gitignore"), data: []byte("# written by bridgetun vscode: the pod's environment (its Secrets too) stays out of git\n*\n"), keep: true},
		fileWrite{path: filepath.Join(envDir, p.service+".env"), private: true, keep: true})
	return apply(plan)
}

// plan is a Config checked and completed.
type plan struct {
	service, port, routeAs string
	localPort              int
	language, program      string
	dir, command           string
}

// Task labels and the launch configuration's name, which later runs find
// again (so they must not change between versions).
func (p plan) interceptLabel() string { return "bridgetun: intercept " + p.service }
func (p plan) leaveLabel() string     { return "bridgetun: leave " + p.service }
func (p plan) launchName() string {
	return fmt.Sprintf("bridgetun: debug %s (%s)", p.service, languageNames[p.language])
}

var languageNames = map[string]string{LanguageGo: "Go", LanguageNode: "Node", LanguagePython: "Python"}

// EnvFile is where the intercept task writes the pod's environment, as
// launch.json names it.
func (p plan) envFile() string {
	return "${workspaceFolder}/.vscode/bridgetun/" + p.service + ".env"
}

var serviceRE = regexp.MustCompile(`^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)

func resolve(cfg Config) (plan, error) {
	p := plan{service: cfg.Service, port: cfg.Port, routeAs: cfg.RouteAs, dir: cfg.Dir, command: cfg.Command}
	if !serviceRE.MatchString(p.service) {
		return plan{}, fmt.Errorf("vscode: %q is not a Service name (lower-case letters, digits and '-')", p.service)
	}
	local, _, _ := strings.Cut(p.port, ":")
	n, err := strconv.Atoi(local)
	if err != nil || n < 1 || n > 65535 {
		return plan{}, fmt.Errorf("vscode: --port %q: want LOCAL[:REMOTE] with LOCAL the port your program listens on (1-65535)", p.port)
	}
	p.localPort = n
	if p.dir == "" {
		p.dir = "."
	}
	if fi, err := os.Stat(p.dir); err != nil || !fi.IsDir() {
		return plan{}, fmt.Errorf("vscode: workspace %q is not a directory: name it with --dir", p.dir)
	}
	if p.command == "" {
		p.command = "bridgetun"
	}
	if p.language, err = language(cfg.Language, cfg.Program, p.dir); err != nil {
		return plan{}, err
	}
	if p.program, err = program(p.language, cfg.Program, p.dir); err != nil {
		return plan{}, err
	}
	return p, nil
}

// language is the one asked for, else guessed from the program's
// extension, else from the workspace's marker files.
func language(asked, program, dir string) (string, error) {
	switch asked {
	case LanguageGo, LanguageNode, LanguagePython, LanguageNone:
		return asked, nil
	case "":
	default:
		return "", fmt.Errorf("vscode: --language %q: want go, node or python (or none, and add the tasks to your own debugger's configuration)", asked)
	}
	switch strings.ToLower(filepath.Ext(program)) {
	case ".go":
		return LanguageGo, nil
	case ".js", ".mjs", ".cjs", ".ts":
		return LanguageNode, nil
	case ".py":
		return LanguagePython, nil
	}
	for _, m := range []struct{ file, lang string }{
		{"go.mod", LanguageGo}, {"package.json", LanguageNode},
		{"pyproject.toml", LanguagePython}, {"requirements.txt", LanguagePython}, {"setup.py", LanguagePython},
	} {
		if _, err := os.Stat(filepath.Join(dir, m.file)); err == nil {
			return m.lang, nil
		}
	}
	return "", errors.New("vscode: cannot tell the workspace's language (no go.mod, package.json or pyproject.toml): give --language go|node|python, or none for the tasks alone")
}

// program is what the launch configuration runs, as VS Code resolves it.
func program(lang, asked, dir string) (string, error) {
	if asked == "" {
		switch lang {
		case LanguageGo:
			return "${workspaceFolder}", nil
		case LanguageNode:
			for _, f := range []string{"index.js", "server.js", "app.js", "main.js"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					return "${workspaceFolder}/" + f, nil
				}
			}
			return "", errors.New("vscode: which file does node run? give it with --program (e.g. --program src/server.js)")
		case LanguagePython:
			for _, f := range []string{"main.py", "app.py"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
					return "${workspaceFolder}/" + f, nil
				}
			}
			return "", errors.New("vscode: which file does python run? give it with --program (e.g. --program app/main.py)")
		}
		return "", nil
	}
	if strings.HasPrefix(asked, "${") || filepath.IsAbs(asked) {
		return filepath.ToSlash(asked), nil
	}
	rel := filepath.ToSlash(filepath.Clean(asked))
	if rel == "." {
		return "${workspaceFolder}", nil
	}
	return "${workspaceFolder}/" + strings.TrimPrefix(rel, "./"), nil
}

// InterceptLabel is the intercept task's label for cfg.Service.
func InterceptLabel(cfg Config) string { return plan{service: cfg.Service}.interceptLabel() }

// LeaveLabel is the leave task's label for cfg.Service.
func LeaveLabel(cfg Config) string { return plan{service: cfg.Service}.leaveLabel() }

// EnvFile is the pod's env file as the tasks and launch.json name it.
func EnvFile(cfg Config) string { return plan{service: cfg.Service}.envFile() }

// LaunchName is the launch configuration's name for cfg, or "" when no
// configuration is written (LanguageNone, or cfg is not valid).
func LaunchName(cfg Config) string {
	p, err := resolve(cfg)
	if err != nil || p.language == LanguageNone {
		return ""
	}
	return p.launchName()
}
