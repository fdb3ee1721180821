package vscode

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/tailscale/hujson"
)

// entry is one element of a VS Code file's list (a task, a launch
// configuration), identified by the value of its key member.
type entry struct {
	id    string // the label or name
	value any    // marshalled as JSON
}

// merge puts entries into the list under listKey of a VS Code JSON file
// (src; empty = a new file), as VS Code reads it: JSON with comments and
// trailing commas. An element whose idKey equals an entry's id is
// replaced by it, unless it says the same already; the others are added at
// the end. Everything else, comments and the user's own elements included,
// is kept byte for byte. version is the file's "version"; a file of
// another version is refused. changed says whether out differs from src.
func merge(src []byte, version, listKey, idKey string, entries []entry) (out []byte, changed bool, err error) {
	if len(bytes.TrimSpace(src)) == 0 {
		return newFile(version, listKey, entries)
	}
	bom := []byte("\ufeff") // some editors start files with one; VS Code reads past it
	body, hadBOM := bytes.CutPrefix(src, bom)
	root, err := hujson.Parse(body)
	if err != nil {
		return nil, false, fmt.Errorf("not JSON with comments: %w", err)
	}
	obj, ok := root.Value.(*hujson.Object)
	if !ok {
		return nil, false, errors.New("not a JSON object")
	}
	if v := member(obj, "version"); v == nil {
		addMember(obj, "version", mustParse(fmt.Sprintf("%q", version)))
		changed = true
	} else if got := literalString(v); got != version {
		return nil, false, fmt.Errorf("has version %s, bridgetun writes version %q: update the file to it first", v.Value, version)
	}
	list := member(obj, listKey)
	if list == nil {
		addMember(obj, listKey, mustParse("[]"))
		list = member(obj, listKey)
		changed = true
	}
	arr, ok := list.Value.(*hujson.Array)
	if !ok {
		return nil, false, fmt.Errorf("%q is not a list", listKey)
	}
	indent, unit := elementIndent(arr, memberIndent(obj))
	for _, e := range entries {
		b, err := marshalIndent(e.value, indent, unit)
		if err != nil {
			return nil, false, err
		}
		nv := mustParse(string(b))
		i := findElement(arr, idKey, e.id)
		if i < 0 {
			appendElement(arr, nv, indent, memberIndent(obj))
			changed = true
			continue
		}
		same, err := sameJSON(arr.Elements[i], b)
		if err != nil {
			return nil, false, err
		}
		if !same {
			nv.BeforeExtra, nv.AfterExtra = arr.Elements[i].BeforeExtra, arr.Elements[i].AfterExtra
			arr.Elements[i] = nv
			changed = true
		}
	}
	if !changed {
		return src, false, nil
	}
	root.UpdateOffsets()
	out = root.Pack()
	if hadBOM {
		out = append(bom, out...)
	}
	return out, true, nil
}

// newFile is a new VS Code file holding entries, version first and
// indented with tabs, as VS Code writes its own.
func newFile(version, listKey string, entries []entry) ([]byte, bool, error) {
	list := make([]any, len(entries))
	for i, e := range entries {
		list[i] = e.value
	}
	lb, err := marshalIndent(list, "\t", "\t")
	if err != nil {
		return nil, false, err
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "{\n\t\"version\": %q,\n\t%q: ", version, listKey)
	buf.Write(lb)
	buf.WriteString("\n}\n")
	return buf.Bytes(), true, nil
}

// member is the value of obj's first member called name, or nil.
func member(obj *hujson.Object, name string) *hujson.Value {
	for i := range obj.Members {
		if literalString(&obj.Members[i].Name) == name {
			return &obj.Members[i].Value
		}
	}
	return nil
}

// literalString is v's string value, or "" when it is no string.
func literalString(v *hujson.Value) string {
	lit, ok := v.Value.(hujson.Literal)
	if !ok || lit.Kind() != '"' {
		return ""
	}
	return lit.String()
}

// addMember adds name: value at the end of obj, on a line of its own,
// indented like obj's other members. What stood after the last member
// (a comment on its line) stays before the new one.
func addMember(obj *hujson.Object, name string, value hujson.Value) {
	indent := memberIndent(obj)
	trailing := false
	if n := len(obj.Members); n > 0 {
		trailing = obj.Members[n-1].Value.AfterExtra != nil
	}
	value.BeforeExtra = hujson.Extra(" ")
	value.AfterExtra = nil
	if trailing {
		value.AfterExtra = hujson.Extra{}
	}
	head, tail := splitExtra(obj.AfterExtra, "")
	obj.Members = append(obj.Members, hujson.ObjectMember{
		Name:  hujson.Value{BeforeExtra: append(head, "\n"+indent...), Value: hujson.String(name)},
		Value: value,
	})
	obj.AfterExtra = tail
}

// memberIndent is how obj's members are indented (a tab if it has none).
func memberIndent(obj *hujson.Object) string {
	if len(obj.Members) > 0 {
		return lastLineIndent(obj.Members[0].Name.BeforeExtra, "\t")
	}
	return "\t"
}

// splitExtra splits the extra before a closing bracket into what belongs
// to the lines before (comments, up to the last line break) and the
// closing line's indentation (outer, when extra has no line break).
func splitExtra(extra hujson.Extra, outer string) (head, tail hujson.Extra) {
	i := bytes.LastIndexByte(extra, '\n')
	if i < 0 {
		return append(hujson.Extra(nil), extra...), hujson.Extra("\n" + outer)
	}
	return append(hujson.Extra(nil), extra[:i]...), append(hujson.Extra(nil), extra[i:]...)
}

// elementIndent is how arr's elements are indented (the last line of the
// first one's leading whitespace) and the file's indent unit.
func elementIndent(arr *hujson.Array, outer string) (indent, unit string) {
	indent = outer + outer
	if len(arr.Elements) > 0 {
		indent = lastLineIndent(arr.Elements[0].BeforeExtra, indent)
	}
	unit = "\t"
	if strings.HasPrefix(indent, " ") && len(indent)%2 == 0 {
		unit = indent[:len(indent)/2]
	}
	return indent, unit
}

// lastLineIndent is the whitespace after the last line break of extra
// when that is all whitespace, else def.
func lastLineIndent(extra hujson.Extra, def string) string {
	i := bytes.LastIndexByte(extra, '\n')
	if i < 0 {
		return def
	}
	rest := string(extra[i+1:])
	if strings.Trim(rest, " \t") != "" || rest == "" {
		return def
	}
	return rest
}

// findElement is the index of arr's first object whose idKey is id, or -1.
func findElement(arr *hujson.Array, idKey, id string) int {
	for i := range arr.Elements {
		obj, ok := arr.Elements[i].Value.(*hujson.Object)
		if !ok {
			continue
		}
		if v := member(obj, idKey); v != nil && literalString(v) == id {
			return i
		}
	}
	return -1
}

// appendElement adds v at the end of arr on a line of its own, keeping
// arr's trailing comma (or its absence); comments after the last element
// stay before v. outer is the indentation of the closing bracket's line.
func appendElement(arr *hujson.Array, v hujson.Value, indent, outer string) {
	head, tail := splitExtra(arr.AfterExtra, outer)
	v.BeforeExtra = append(head, "\n"+indent...)
	v.AfterExtra = nil
	if n := len(arr.Elements); n > 0 && arr.Elements[n-1].AfterExtra != nil {
		v.AfterExtra = hujson.Extra{}
	}
	arr.AfterExtra = tail
	arr.Elements = append(arr.Elements, v)
}

// sameJSON reports whether the element v (JSON with comments) holds the
// same data as the standard JSON b.
func sameJSON(v hujson.Value, b []byte) (bool, error) {
	c := v.Clone()
	c.Standardize()
	var x, y any
	if err := json.Unmarshal(c.Pack(), &x); err != nil {
		return false, err
	}
	if err := json.Unmarshal(b, &y); err != nil {
		return false, err
	}
	return reflect.DeepEqual(x, y), nil
}

// marshalIndent is json.MarshalIndent without HTML escaping (a shell
// command's "&" stays "&"), and without the encoder's final newline.
func marshalIndent(v any, prefix, indent string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent(prefix, indent)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// mustParse parses JSON that this package marshalled itself.
func mustParse(s string) hujson.Value {
	v, err := hujson.Parse([]byte(s))
	if err != nil {
		panic(fmt.Sprintf("vscode: parse own JSON %q: %v", s, err))
	}
	return v
}
