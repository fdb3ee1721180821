package vscode

import (
	"strings"
	"testing"
)

// TestMergeShapes: files of every shape people keep come out valid, keep
// their comments, and a second merge changes nothing.
func TestMergeShapes(t *testing.T) {
	p, err := resolve(Config{Service: "api", Port: "8080", Language: LanguageNone, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"empty object":    "{}",
		"comment only":    "{\n\t// nothing yet\n}\n",
		"one line":        `{"version": "2.0.0", "tasks": []}`,
		"no tasks":        "{\n  \"version\": \"2.0.0\" // two spaces\n}\n",
		"byte order mark": "\ufeff{\n\t\"version\": \"2.0.0\",\n\t\"tasks\": []\n}\n",
		"four spaces":     "{\n    \"version\": \"2.0.0\",\n    \"tasks\": [\n        {\"label\": \"x\", \"type\": \"shell\", \"command\": \"x\"}\n    ]\n}\n",
		"block comments":  "/* a */ {/* b */ \"version\": /* c */ \"2.0.0\", \"tasks\": [/* d */],}",
		"whitespace only": " \n",
	} {
		t.Run(name, func(t *testing.T) {
			out, changed, err := merge([]byte(src), "2.0.0", "tasks", "label", p.tasks())
			if err != nil || !changed {
				t.Fatalf("merge: %v, changed %v", err, changed)
			}
			checkTasks(t, []byte(strings.TrimPrefix(string(out), "\ufeff")))
			for _, c := range []string{"// nothing yet", "// two spaces", "/* a */", "/* b */", "/* c */", "/* d */"} {
				if strings.Contains(src, c) && !strings.Contains(string(out), c) {
					t.Errorf("lost %q:\n%s", c, out)
				}
			}
			if strings.HasPrefix(src, "\ufeff") != strings.HasPrefix(string(out), "\ufeff") {
				t.Errorf("byte order mark not kept as it was")
			}
			again, changed, err := merge(out, "2.0.0", "tasks", "label", p.tasks())
			if err != nil || changed || string(again) != string(out) {
				t.Errorf("second merge: %v, changed %v", err, changed)
			}
			if n := strings.Count(string(out), `"label": "bridgetun: intercept api"`); n != 1 {
				t.Errorf("%d intercept tasks, want 1:\n%s", n, out)
			}
		})
	}
}
