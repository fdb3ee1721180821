package vscode

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tailscale/hujson"
)

// schema is the subset of JSON Schema that testdata/*.schema.json use:
// type, enum, required, properties, additionalProperties, items, oneOf,
// anyOf and local $ref.
type schema struct {
	Ref                  string             `json:"$ref"`
	Type                 string             `json:"type"`
	Enum                 []any              `json:"enum"`
	Required             []string           `json:"required"`
	Properties           map[string]*schema `json:"properties"`
	AdditionalProperties json.RawMessage    `json:"additionalProperties"`
	Items                *schema            `json:"items"`
	OneOf                []*schema          `json:"oneOf"`
	AnyOf                []*schema          `json:"anyOf"`
	Definitions          map[string]*schema `json:"definitions"`
}

func loadSchema(t *testing.T, name string) *schema {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var s schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &s
}

// validate returns what of v (decoded JSON) s refuses, each with its path.
func (s *schema) validate(root *schema, v any, path string) []string {
	if s.Ref != "" {
		def, ok := root.Definitions[strings.TrimPrefix(s.Ref, "#/definitions/")]
		if !ok {
			return []string{path + ": unknown $ref " + s.Ref}
		}
		return def.validate(root, v, path)
	}
	var errs []string
	if s.Type != "" && !hasType(v, s.Type) {
		return []string{fmt.Sprintf("%s: got %T, want %s", path, v, s.Type)}
	}
	if s.Enum != nil && !slices.Contains(s.Enum, v) {
		errs = append(errs, fmt.Sprintf("%s: %v is not one of %v", path, v, s.Enum))
	}
	if s.OneOf != nil {
		n := 0
		for _, alt := range s.OneOf {
			if len(alt.validate(root, v, path)) == 0 {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, fmt.Sprintf("%s: matches %d of oneOf's %d schemas, want 1", path, n, len(s.OneOf)))
		}
	}
	if s.AnyOf != nil && !slices.ContainsFunc(s.AnyOf, func(alt *schema) bool { return len(alt.validate(root, v, path)) == 0 }) {
		errs = append(errs, path+": matches none of anyOf")
	}
	if obj, ok := v.(map[string]any); ok {
		for _, r := range s.Required {
			if _, ok := obj[r]; !ok {
				errs = append(errs, fmt.Sprintf("%s: %q is required", path, r))
			}
		}
		var extra *schema
		closed := string(s.AdditionalProperties) == "false"
		if len(s.AdditionalProperties) > 0 && !closed && string(s.AdditionalProperties) != "true" {
			extra = new(schema)
			_ = json.Unmarshal(s.AdditionalProperties, extra)
		}
		for k, val := range obj {
			switch p, ok := s.Properties[k]; {
			case ok:
				errs = append(errs, p.validate(root, val, path+"."+k)...)
			case closed:
				errs = append(errs, fmt.Sprintf("%s: property %q is not allowed", path, k))
			case extra != nil:
				errs = append(errs, extra.validate(root, val, path+"."+k)...)
			}
		}
	}
	if arr, ok := v.([]any); ok && s.Items != nil {
		for i, e := range arr {
			errs = append(errs, s.Items.validate(root, e, fmt.Sprintf("%s[%d]", path, i))...)
		}
	}
	return errs
}

func hasType(v any, typ string) bool {
	switch typ {
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	}
	return false
}

// decodeJSONC reads a VS Code file as VS Code does: comments and
// trailing commas allowed.
func decodeJSONC(t *testing.T, b []byte) map[string]any {
	t.Helper()
	std, err := hujson.Standardize(b)
	if err != nil {
		t.Fatalf("not JSON with comments: %v\n%s", err, b)
	}
	var m map[string]any
	if err := json.Unmarshal(std, &m); err != nil {
		t.Fatalf("not a JSON object: %v\n%s", err, b)
	}
	return m
}

// checkTasks validates tasks.json against the schema and against what
// VS Code's task parser refuses beyond it (problemMatcher.ts): an inline
// matcher needs a pattern with a file and a message group, and a line or
// location group unless its kind is "file"; a background matcher needs
// both beginsPattern and endsPattern; and every regexp must compile. A
// background task (isBackground) that a debugger waits for must have
// such a matcher, or VS Code never sees it become ready.
func checkTasks(t *testing.T, b []byte) {
	t.Helper()
	doc := decodeJSONC(t, b)
	s := loadSchema(t, "tasks.schema.json")
	for _, e := range s.validate(s, doc, "tasks.json") {
		t.Error(e)
	}
	tasks, _ := doc["tasks"].([]any)
	for i, x := range tasks {
		task, _ := x.(map[string]any)
		where := fmt.Sprintf("tasks[%d] (%v)", i, task["label"])
		pm, _ := task["problemMatcher"].(map[string]any)
		if task["isBackground"] == true && pm == nil {
			t.Errorf("%s: a background task without an inline problem matcher never signals ready", where)
			continue
		}
		if pm == nil {
			continue
		}
		pat, _ := pm["pattern"].(map[string]any)
		if pat == nil {
			t.Errorf("%s: problem matcher without a pattern (VS Code: \"doesn't define a valid problem pattern\")", where)
			continue
		}
		_, file := pat["file"]
		_, msg := pat["message"]
		_, line := pat["line"]
		_, loc := pat["location"]
		if !file || !msg || (pat["kind"] != "file" && !line && !loc) {
			t.Errorf("%s: pattern %v lacks file/message or line/location groups", where, pat)
		}
		regexps := []any{pat["regexp"]}
		if bg, ok := pm["background"].(map[string]any); ok {
			if bg["beginsPattern"] == nil || bg["endsPattern"] == nil {
				t.Errorf("%s: background needs both beginsPattern and endsPattern", where)
			}
			regexps = append(regexps, bg["beginsPattern"], bg["endsPattern"])
		} else if task["isBackground"] == true {
			t.Errorf("%s: background task without background patterns", where)
		}
		for _, r := range regexps {
			if s, ok := r.(string); ok {
				if _, err := regexp.Compile(s); err != nil {
					t.Errorf("%s: regexp %q: %v", where, s, err)
				}
			}
		}
	}
}

func checkLaunch(t *testing.T, b []byte) {
	t.Helper()
	doc := decodeJSONC(t, b)
	s := loadSchema(t, "launch.schema.json")
	for _, e := range s.validate(s, doc, "launch.json") {
		t.Error(e)
	}
}

// TestSchemaCheckFails: the checks refuse what VS Code refuses, so a
// passing test means something.
func TestSchemaCheckFails(t *testing.T) {
	s := loadSchema(t, "tasks.schema.json")
	for _, bad := range []string{
		`{"tasks": []}`,
		`{"version": "0.1.0", "tasks": []}`,
		`{"version": "2.0.0", "tasks": [{"type": "shell", "command": "x"}]}`,
		`{"version": "2.0.0", "tasks": [{"label": "a", "type": "npm", "command": "x"}]}`,
		`{"version": "2.0.0", "tasks": [{"label": "a", "type": "shell", "command": "x", "problemMatcher": {"pattern": {"regexp": "x"}, "background": {"beginPattern": "x"}}}]}`,
		`{"version": "2.0.0", "tasks": [{"label": "a", "type": "shell", "command": "x", "problemMatcher": {"pattern": {"file": 1}}}]}`,
	} {
		var doc any
		if err := json.Unmarshal([]byte(bad), &doc); err != nil {
			t.Fatal(err)
		}
		if len(s.validate(s, doc, "tasks.json")) == 0 {
			t.Errorf("schema accepts %s", bad)
		}
	}
	l := loadSchema(t, "launch.schema.json")
	var doc any
	_ = json.Unmarshal([]byte(`{"version": "0.2.0", "configurations": [{"type": "go", "name": "x"}]}`), &doc)
	if len(l.validate(l, doc, "launch.json")) == 0 {
		t.Error("launch schema accepts a configuration without request")
	}
}
