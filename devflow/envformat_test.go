package devflow

import (
	"bufio"
	"bytes"
	"strings"
	"testing"
)

// readDockerEnvFile reads an env file the way docker's CLI does
// (opts.ParseEnvFile): each line with leading whitespace trimmed, empty
// lines and lines starting with # skipped, split at the first '=', the
// value kept literally.
func readDockerEnvFile(b []byte) map[string]string {
	out := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimLeft(sc.Text(), " \t")
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		out[k] = v
	}
	return out
}

// TestDockerEnv: every value docker can carry is read back exactly
// (quotes, $, backticks, backslashes, spaces are literal there), and what
// it cannot carry is left out with a comment instead of being misread.
func TestDockerEnv(t *testing.T) {
	vars := []EnvVar{
		{"PLAIN", "plain"},
		{"TRICKY", `q"uote 'single' $HOME \back ` + "`id`" + ` #not-a-comment`},
		{"EMPTY", ""},
		{"LEADING", "  spaced  "},
		{"MULTI", "two\nlines"},
		{"BAD NAME", "x"},
		{"#HASH", "x"},
	}
	out := dockerEnv(vars)
	got := readDockerEnvFile(out)
	for _, v := range vars[:4] {
		if g, ok := got[v.Name]; !ok || g != v.Value {
			t.Errorf("%s: docker reads %q (present %v), want %q\n%s", v.Name, g, ok, v.Value, out)
		}
	}
	for _, name := range []string{"MULTI", "BAD NAME", "#HASH", "lines"} {
		if _, ok := got[name]; ok {
			t.Errorf("%s: written although docker would misread it\n%s", name, out)
		}
	}
	for _, want := range []string{`# "MULTI" left out`, `# "BAD NAME" left out`, `# "#HASH" left out`} {
		if !strings.Contains(string(out), strings.ReplaceAll(want, `"MULTI"`, "MULTI")) {
			t.Errorf("missing comment %s\n%s", want, out)
		}
	}
	if string(renderEnv("", vars[:1])) != string(dotenv(vars[:1])) {
		t.Error(`renderEnv(""): want dotenv`)
	}
}

func TestMergeInterceptEnvFormat(t *testing.T) {
	bad := "yaml"
	if _, err := MergeIntercept(ProjectConfig{}, InterceptFlags{Service: "api", Port: ptrTo("8080"), EnvFormat: &bad}); err == nil || !strings.Contains(err.Error(), `--env-format "yaml": want dotenv`) {
		t.Errorf("got %v, want a one-line refusal naming the formats", err)
	}
	pc := ProjectConfig{Intercept: ProjectIntercept{EnvFormat: "docker"}}
	cfg, err := MergeIntercept(pc, InterceptFlags{Service: "api", Port: ptrTo("8080")})
	if err != nil || cfg.Replicate.EnvFormat != EnvFormatDocker {
		t.Errorf("from bridgetun.yaml: got %q, %v; want docker", cfg.Replicate.EnvFormat, err)
	}
}

func ptrTo[T any](v T) *T { return &v }
