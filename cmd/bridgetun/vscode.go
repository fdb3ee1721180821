package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/bridgetun/bridgetun/devflow/vscode"
)

// vscodeResult is what vscode --json prints.
type vscodeResult struct {
	Files  []vscodeFile `json:"files"`
	Launch string       `json:"launch,omitempty"` // the launch configuration's name; "" with --language none
	Task   string       `json:"task"`             // the intercept task's label
}

type vscodeFile struct {
	Path    string `json:"path"`
	Written bool   `json:"written"` // false: it said so already
}

func newVSCodeCmd() *cobra.Command {
	var (
		cfg    vscode.Config
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "vscode SERVICE --port LOCAL[:REMOTE] [--language go|node|python|none] [--program PATH] [--route-as VALUE] [--dir WORKSPACE]",
		Short: "Set up a VS Code workspace to debug SERVICE's code under an intercept (F5)",
		Long: `Write what VS Code needs to debug a local copy of SERVICE with the cluster's
traffic: in WORKSPACE/.vscode (default: the working directory)

  tasks.json   "bridgetun: intercept SERVICE", a background task that runs
               bridgetun intercept SERVICE --port LOCAL[:REMOTE] --env-file
               .vscode/bridgetun/SERVICE.env --env-format docker --wait 5m
               -- bridgetun vscode-hold
               and is ready (its problem matcher's endsPattern) once the pod's
               environment is written and it waits for LOCAL to listen; the
               workload is patched as soon as your program listens, and the
               intercept lasts while the task runs;
               "bridgetun: leave SERVICE", which ends it.
  launch.json  "bridgetun: debug SERVICE (Go|Node|Python)": the Go extension's
               delve, VS Code's Node debugger or the Python debugger (debugpy)
               running --program with envFile = the pod's environment,
               GRPC_DNS_RESOLVER=native, the intercept task as preLaunchTask
               and the leave task as postDebugTask.

So F5 on that configuration intercepts SERVICE, debugs your program with the
pod's environment and leaves when the debug session ends. ` + "`bridgetun up`" + ` must
be running (TUN mode: in netstack mode your program needs the session's
proxies, see ` + "`bridgetun run`" + `). The env file holds the pod's Secrets:
.vscode/bridgetun/ gets a .gitignore that keeps it out of git. Its format is
docker's (KEY=value, literal), the one VS Code's debuggers read alike.

Entries are found again by label and name: running this again updates them
in place, and writes nothing when they say the same already. Your own tasks
and configurations, comments and trailing commas stay as they are; a file
that is not JSON with comments is refused, and then nothing is written.

--language is guessed from --program's extension, else from go.mod,
package.json or pyproject.toml/requirements.txt; with none only tasks.json is
written (add preLaunchTask, postDebugTask and envFile to your own debugger's
configuration). --program defaults to the workspace folder for Go, to
index.js/server.js/app.js/main.js for Node and main.py/app.py for Python.
--route-as VALUE intercepts only requests with kubernetes-route-as: VALUE
(intercept's --isolate).

Exit codes: 0 when the files are in place (written or already so); 1 when
they could not be (the reason on stderr, also with --json).`,
		Example: `  # in your Go module's folder
  bridgetun vscode api --port 8080
  # a Node server; only requests with kubernetes-route-as: alice come here
  bridgetun vscode web --port 3000 --program server.js --route-as alice
  # a Python service whose code is in another folder
  bridgetun vscode stats --port 8000:http --language python --program app/main.py --dir ../stats`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cfg.Port == "" {
				return fmt.Errorf("vscode: give --port LOCAL[:REMOTE], the port your program listens on (e.g. bridgetun vscode %s --port 8080)", args[0])
			}
			cfg.Service = args[0]
			changes, err := vscode.Write(cfg)
			if err != nil {
				return err
			}
			res := vscodeResult{Launch: vscode.LaunchName(cfg), Task: vscode.InterceptLabel(cfg)}
			for _, c := range changes {
				res.Files = append(res.Files, vscodeFile{Path: c.Path, Written: c.Written})
			}
			w := cmd.OutOrStdout()
			if asJSON {
				return printJSON(w, res)
			}
			for _, f := range res.Files {
				verb := "unchanged"
				if f.Written {
					verb = "wrote    "
				}
				fmt.Fprintf(w, "%s %s\n", verb, f.Path)
			}
			if res.Launch != "" {
				fmt.Fprintf(w, "in VS Code: Run and Debug → %q → F5 (with `bridgetun up` running)\n", res.Launch)
			} else {
				fmt.Fprintf(w, "add to your debugger's configuration: \"preLaunchTask\": %q, \"postDebugTask\": %q, \"envFile\": %q\n", res.Task, vscode.LeaveLabel(cfg), vscode.EnvFile(cfg))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Port, "port", "", "LOCAL[:REMOTE]: the port your program listens on, and the Service port's name or number (as intercept takes it)")
	f.StringVar(&cfg.Language, "language", "", "go, node, python, or none for tasks only (default: guessed from --program, then the workspace)")
	f.StringVar(&cfg.Program, "program", "", "what the debugger runs, relative to the workspace (default: the language's usual entry point)")
	f.StringVar(&cfg.RouteAs, "route-as", "", "intercept only requests with kubernetes-route-as: VALUE (intercept --isolate)")
	f.StringVar(&cfg.Dir, "dir", "", "the workspace folder VS Code opens (default: the working directory)")
	f.StringVar(&cfg.Command, "bin", "", "how the tasks run bridgetun (default: bridgetun from VS Code's PATH)")
	f.BoolVar(&asJSON, "json", false, `print {"files": [{"path", "written"}], "launch", "task"}`)
	return cmd
}

// newVSCodeHoldCmd is the `-- CMD` of the intercept task that `bridgetun
// vscode` writes: the debugger, not bridgetun, runs the program, so the
// intercept's command only waits. It ends on SIGINT/SIGTERM (intercept
// stops it when the intercept ends elsewhere, e.g. by the leave task) or
// when the intercept that started it is gone.
func newVSCodeHoldCmd() *cobra.Command {
	return &cobra.Command{
		Use:    vscode.HoldCommand,
		Short:  "Wait until interrupted: the command of the intercept task that `bridgetun vscode` writes",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			fmt.Fprintln(cmd.OutOrStdout(), "holding: the intercept lasts until the debug session ends (its postDebugTask leaves) or this task is stopped")
			parent := os.Getppid()
			t := time.NewTicker(time.Second) // polling for the parent's end: no portable signal for it
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
					if os.Getppid() != parent {
						return nil
					}
				}
			}
		},
	}
}
