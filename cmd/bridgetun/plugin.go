package main

import (
	"path/filepath"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The kubectl plugin: the same binary, installed as kubectl-bridgetun
// (make build links it; krew installs it from deploy/krew/bridgetun.yaml).
// kubectl runs a plugin with argv[0] its path, so the base name says how
// the user called us, and help, usage and hints name the command they typed.
const (
	baseName       = "bridgetun"
	pluginName     = "kubectl bridgetun"
	pluginFile     = "kubectl-bridgetun"
	pluginComplete = "kubectl_complete-bridgetun" // kubectl ≥ 1.26 runs it to complete `kubectl bridgetun …`
)

// programNameFor is the command a user typed to run the binary at argv0:
// "kubectl bridgetun" for the plugin (or its completion helper), else
// "bridgetun".
func programNameFor(argv0 string) string {
	switch executableBase(argv0) {
	case pluginFile, pluginComplete:
		return pluginName
	}
	return baseName
}

// pluginArgs is the argument list for cobra: kubectl calls
// kubectl_complete-bridgetun with the words to complete, which is
// cobra's `__complete` command.
func pluginArgs(argv0 string, args []string) []string {
	if executableBase(argv0) == pluginComplete {
		return append([]string{cobra.ShellCompRequestCmd}, args...)
	}
	return args
}

// executableBase is argv0's file name without a Windows .exe suffix.
func executableBase(argv0 string) string {
	b := filepath.Base(argv0)
	if ext := filepath.Ext(b); strings.EqualFold(ext, ".exe") {
		b = b[:len(b)-len(ext)]
	}
	return b
}

// renameProgram makes root's tree say name where it says "bridgetun":
// the usage lines (cobra's display name), and every command line that a
// Long text, Example, flag help or error hint shows ("bridgetun up",
// "`bridgetun leave SERVICE`"). File names such as bridgetun.yaml,
// ~/.local/state/bridgetun or bridgetun-agent stay as they are.
func renameProgram(root *cobra.Command, name string) {
	if name == baseName {
		return
	}
	if root.Annotations == nil {
		root.Annotations = map[string]string{}
	}
	root.Annotations[cobra.CommandDisplayNameAnnotation] = name
	re := commandLineRe(root)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Long = rewriteCommandLines(re, c.Long, name)
		c.Example = rewriteCommandLines(re, c.Example, name)
		c.Short = rewriteCommandLines(re, c.Short, name)
		c.LocalFlags().VisitAll(func(f *pflag.Flag) { f.Usage = rewriteCommandLines(re, f.Usage, name) })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { f.Usage = rewriteCommandLines(re, f.Usage, name) })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// programText is s (an error or hint for the user) with its bridgetun
// command lines naming the program as the user called it.
func programText(root *cobra.Command, s string) string {
	name := root.DisplayName()
	if name == baseName {
		return s
	}
	return rewriteCommandLines(commandLineRe(root), s, name)
}

// commandLineRe matches "bridgetun" where it starts a command line: at the
// start or after a space, quote, backtick or bracket, and followed by one
// of root's subcommands or --help.
func commandLineRe(root *cobra.Command) *regexp.Regexp {
	subs := []string{"help", "completion", "--help"}
	for _, c := range root.Commands() {
		subs = append(subs, regexp.QuoteMeta(c.Name()))
	}
	return regexp.MustCompile("(^|[\\s`'\"(\\[])" + baseName + " (" + strings.Join(subs, "|") + ")\\b")
}

func rewriteCommandLines(re *regexp.Regexp, s, name string) string {
	if !strings.Contains(s, baseName) {
		return s
	}
	return re.ReplaceAllString(s, "${1}"+name+" ${2}")
}
