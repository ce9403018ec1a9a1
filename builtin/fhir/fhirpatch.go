package fhir

// FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html): a Parameters
// resource whose "operation" parameters add, insert, delete, replace and
// move elements located by FHIRPath expressions.
//
// Paths are the subset of FHIRPath that names elements: the resource type,
// then element names separated by dots, each optionally followed by an
// index ("name[0]"), and the functions where(criteria) (the criteria in
// the FHIRPath the search parameters use: paths, =, !=, and, or, exists(),
// …), first() and last(). A choice element is named without its type
// ("Observation.value" finds valueQuantity). Anything else (resolve(),
// ofType(), descendants(), arithmetic) is answered 400 naming the
// operation. Values are value[x] parts, or nested parts for anonymous
// (backbone) elements.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/omnigate/omnigate/builtin/fhir/internal/fhirpath"
	"github.com/omnigate/omnigate/builtin/fhir/internal/spec"
)

// fhirPatch is a parsed FHIRPath Patch.
type fhirPatch struct {
	ops []*patchOp
}

// patchOp is one operation of a FHIRPath Patch.
type patchOp struct {
	n     int    // index in Parameters.parameter
	kind  string // add, insert, delete, replace, move
	src   string // the path as given
	path  []patchStep
	name  string
	value *patchValue
	index int // insert
	from  int // move source
	to    int // move destination
}

// patchValue is the value of an add, insert or replace: a value[x]
// (typ its type suffix, "Quantity", "String") or anonymous parts.
type patchValue struct {
	typ   string
	v     any        // decoded value[x] (ordered)
	parts []namedVal // anonymous element
}

type namedVal struct {
	name string
	val  *patchValue
}

// patchStep is one step of a path: an element name, or a function, with an
// optional index after it.
type patchStep struct {
	name     string         // element name; "" for a function
	fn       string         // where, first, last
	criteria *fhirpath.Expr // where
	index    int            // -1 for none
}

// label names the operation in messages.
func (o *patchOp) label() string {
	return fmt.Sprintf("FHIRPath Patch operation[%d] (%s): ", o.n, o.kind)
}

// patchBody reads a PATCH body: a JSON Patch (application/json-patch+json)
// or a FHIRPath Patch (a Parameters resource, application/fhir+json or
// application/json).
func (h *Handler) patchBody(req *request) ([]byte, *fhirPatch, error) {
	mt, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	switch mt {
	case "application/json-patch+json":
		b, err := h.readBody(req.Request)
		return b, nil, err
	case "application/fhir+json", "application/json":
		b, err := h.readBody(req.Request)
		if err != nil {
			return nil, nil, err
		}
		fp, err := parseFHIRPatch(b)
		return nil, fp, err
	}
	return nil, nil, errorf(http.StatusUnsupportedMediaType,
		"PATCH takes a JSON Patch (Content-Type: application/json-patch+json) or a FHIRPath Patch (a Parameters resource, Content-Type: application/fhir+json)")
}

// parseFHIRPatch reads a FHIRPath Patch. Its errors are 400s naming the
// operation.
func parseFHIRPatch(body []byte) (*fhirPatch, error) {
	root, err := decodeOrdered(body)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "FHIRPath Patch: %v", err)
	}
	obj, ok := root.(*jobject)
	if !ok || obj.vals["resourceType"] != "Parameters" {
		return nil, errorf(http.StatusBadRequest, "a FHIRPath Patch is a Parameters resource")
	}
	params, _ := obj.vals["parameter"].([]any)
	fp := &fhirPatch{}
	for i, raw := range params {
		p, ok := raw.(*jobject)
		if !ok || p.vals["name"] != "operation" {
			return nil, errorf(http.StatusBadRequest, "FHIRPath Patch parameter[%d]: each parameter is an \"operation\"", i)
		}
		op, err := parseOperation(i, p)
		if err != nil {
			return nil, err
		}
		fp.ops = append(fp.ops, op)
	}
	if len(fp.ops) == 0 {
		return nil, errorf(http.StatusBadRequest, "FHIRPath Patch: no operation")
	}
	return fp, nil
}

func parseOperation(i int, p *jobject) (*patchOp, error) {
	op := &patchOp{n: i, index: -1, from: -1, to: -1}
	parts := map[string]*jobject{}
	list, _ := p.vals["part"].([]any)
	for _, raw := range list {
		part, ok := raw.(*jobject)
		name := ""
		if ok {
			name, _ = part.vals["name"].(string)
		}
		if name == "" {
			return nil, errorf(http.StatusBadRequest, "FHIRPath Patch operation[%d]: a part without a name", i)
		}
		if parts[name] != nil {
			return nil, errorf(http.StatusBadRequest, "FHIRPath Patch operation[%d]: part %q given twice", i, name)
		}
		parts[name] = part
	}
	str := func(name string) (string, bool) {
		part := parts[name]
		if part == nil {
			return "", false
		}
		for _, k := range part.keys {
			if strings.HasPrefix(k, "value") {
				s, ok := part.vals[k].(string)
				return s, ok && s != ""
			}
		}
		return "", false
	}
	integer := func(name string) (int, error) {
		part := parts[name]
		if part == nil {
			return 0, fmt.Errorf("needs %s", name)
		}
		for _, k := range part.keys {
			if strings.HasPrefix(k, "value") {
				if n, ok := part.vals[k].(json.Number); ok {
					if v, err := strconv.Atoi(string(n)); err == nil && v >= 0 {
						return v, nil
					}
				}
			}
		}
		return 0, fmt.Errorf("%s must be a non-negative integer (valueInteger)", name)
	}
	kind, ok := str("type")
	if !ok {
		return nil, errorf(http.StatusBadRequest, "FHIRPath Patch operation[%d]: no type (add, insert, delete, replace or move)", i)
	}
	op.kind = kind
	bad := func(format string, args ...any) error {
		return errorf(http.StatusBadRequest, "%s%s", op.label(), fmt.Sprintf(format, args...))
	}
	allowed := map[string][]string{
		"add": {"type", "path", "name", "value"}, "insert": {"type", "path", "value", "index"},
		"delete": {"type", "path"}, "replace": {"type", "path", "value"}, "move": {"type", "path", "source", "destination"},
	}[kind]
	if allowed == nil {
		return nil, bad("unknown operation type %q (want add, insert, delete, replace or move)", kind)
	}
	for name := range parts {
		if !containsString(allowed, name) {
			return nil, bad("unexpected part %q", name)
		}
	}
	if op.src, ok = str("path"); !ok {
		return nil, bad("needs a path")
	}
	var err error
	if op.path, err = parsePatchPath(op.src); err != nil {
		return nil, bad("path %q: %v", op.src, err)
	}
	switch kind {
	case "add":
		if op.name, ok = str("name"); !ok {
			return nil, bad("needs a name")
		}
	case "insert":
		if op.index, err = integer("index"); err != nil {
			return nil, bad("%v", err)
		}
	case "move":
		if op.from, err = integer("source"); err != nil {
			return nil, bad("%v", err)
		}
		if op.to, err = integer("destination"); err != nil {
			return nil, bad("%v", err)
		}
	}
	if kind == "insert" || kind == "move" {
		if last := op.path[len(op.path)-1]; last.name == "" || last.index >= 0 || len(op.path) < 2 {
			return nil, bad("path %q: an %s names a list by its element name", op.src, kind)
		}
	}
	if kind == "add" || kind == "insert" || kind == "replace" {
		if parts["value"] == nil {
			return nil, bad("needs a value")
		}
		if op.value, err = patchValueOf(parts["value"], 0); err != nil {
			return nil, bad("value: %v", err)
		}
	}
	return op, nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// patchValueOf reads a value part: its value[x], or its nested parts.
func patchValueOf(part *jobject, depth int) (*patchValue, error) {
	if depth > 32 {
		return nil, errors.New("parts nested too deep")
	}
	for _, k := range part.keys {
		if strings.HasPrefix(k, "value") && len(k) > len("value") {
			return &patchValue{typ: k[len("value"):], v: part.vals[k]}, nil
		}
	}
	list, ok := part.vals["part"].([]any)
	if !ok || len(list) == 0 {
		return nil, errors.New("no value[x] and no parts")
	}
	pv := &patchValue{}
	for _, raw := range list {
		sub, ok := raw.(*jobject)
		name := ""
		if ok {
			name, _ = sub.vals["name"].(string)
		}
		if name == "" {
			return nil, errors.New("a part without a name")
		}
		v, err := patchValueOf(sub, depth+1)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		pv.parts = append(pv.parts, namedVal{name, v})
	}
	return pv, nil
}

// parsePatchPath reads the supported subset of FHIRPath (see the package
// comment of this file).
func parsePatchPath(src string) ([]patchStep, error) {
	segs, err := splitPath(src)
	if err != nil {
		return nil, err
	}
	var steps []patchStep
	for _, seg := range segs {
		st := patchStep{index: -1}
		body := seg
		if strings.HasSuffix(body, "]") {
			open := strings.LastIndexByte(body, '[')
			if open < 0 {
				return nil, fmt.Errorf("unbalanced [ in %q", seg)
			}
			n, err := strconv.Atoi(body[open+1 : len(body)-1])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("index %q is not a non-negative integer", body[open+1:len(body)-1])
			}
			st.index, body = n, body[:open]
		}
		switch {
		case isElementName(body):
			st.name = body
		case body == "first()" || body == "last()":
			st.fn = strings.TrimSuffix(body, "()")
		case strings.HasPrefix(body, "where(") && strings.HasSuffix(body, ")"):
			crit := body[len("where(") : len(body)-1]
			e, err := fhirpath.Parse(crit)
			if err != nil {
				return nil, fmt.Errorf("where criteria %q: %v", crit, err)
			}
			st.fn, st.criteria = "where", e
		default:
			name := body
			if i := strings.IndexByte(name, '('); i >= 0 {
				name = name[:i] + "()"
			}
			return nil, fmt.Errorf("%s is not supported (element names, [index], where(), first() and last() are)", name)
		}
		steps = append(steps, st)
	}
	if len(steps) == 0 || steps[0].name == "" {
		return nil, errors.New("a path starts with the resource type or an element name")
	}
	return steps, nil
}

// isElementName reports whether s is a FHIRPath identifier.
func isElementName(s string) bool {
	if s == "" || !(unicode.IsLetter(rune(s[0])) || s[0] == '_') {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// splitPath splits an expression at the dots outside parentheses,
// brackets and quotes.
func splitPath(src string) ([]string, error) {
	var segs []string
	depth, start := 0, 0
	for i := 0; i < len(src); i++ {
		switch c := src[i]; c {
		case '\'', '"', '`':
			j := i + 1
			for j < len(src) && src[j] != c {
				if src[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(src) {
				return nil, errors.New("unterminated quote")
			}
			i = j
		case '(', '[':
			depth++
		case ')', ']':
			depth--
			if depth < 0 {
				return nil, errors.New("unbalanced parentheses")
			}
		case '.':
			if depth == 0 {
				segs = append(segs, strings.TrimSpace(src[start:i]))
				start = i + 1
			}
		}
	}
	if depth != 0 {
		return nil, errors.New("unbalanced parentheses")
	}
	segs = append(segs, strings.TrimSpace(src[start:]))
	for _, s := range segs {
		if s == "" {
			return nil, errors.New("empty step")
		}
	}
	return segs, nil
}

// loc is where a path leads: the element key of object parent, item index
// of its list (-1 when not a list item). def is the schema definition of
// the element's type, "" when unknown.
type loc struct {
	parent *jobject
	key    string
	index  int
	base   string // the name the path used, when key is a choice (valueQuantity for value)
	def    string
	pdef   string // the definition of parent's type
}

func (l loc) get(root *jobject) any {
	if l.parent == nil {
		return root
	}
	v := l.parent.vals[l.key]
	if l.index >= 0 {
		arr, _ := v.([]any)
		if l.index < len(arr) {
			return arr[l.index]
		}
		return nil
	}
	return v
}

// eval returns where the path leads in the resource root of type typ.
func eval(root *jobject, typ string, steps []patchStep) []loc {
	cur := []loc{{index: -1, def: typ}}
	for i, st := range steps {
		switch {
		case i == 0 && (st.name == typ || st.name == "Resource" || st.name == "DomainResource"):
			// The resource itself.
		case st.name != "":
			var next []loc
			for _, l := range cur {
				obj, ok := l.get(root).(*jobject)
				if !ok {
					continue
				}
				key, base := st.name, ""
				if _, ok := obj.vals[key]; !ok {
					if key = choiceKey(obj, st.name); key == "" {
						continue
					}
					base = st.name
				}
				def := childDef(l.def, key)
				if arr, ok := obj.vals[key].([]any); ok {
					for j := range arr {
						next = append(next, loc{parent: obj, key: key, index: j, base: base, def: def, pdef: l.def})
					}
				} else {
					next = append(next, loc{parent: obj, key: key, index: -1, base: base, def: def, pdef: l.def})
				}
			}
			cur = next
		case st.fn == "where":
			var next []loc
			for _, l := range cur {
				out := st.criteria.Eval(plain(l.get(root)), func(s string) string { return spec.DataTypes[s] })
				if len(out) == 1 && out[0].V == true {
					next = append(next, l)
				}
			}
			cur = next
		case st.fn == "first":
			cur = cur[:min(1, len(cur))]
		case st.fn == "last":
			if len(cur) > 1 {
				cur = cur[len(cur)-1:]
			}
		}
		if st.index >= 0 {
			if st.index < len(cur) {
				cur = []loc{cur[st.index]}
			} else {
				cur = nil
			}
		}
	}
	return cur
}

// choiceKey finds the member of obj that is choice element name with its
// type ("valueQuantity" for "value").
func choiceKey(obj *jobject, name string) string {
	for _, k := range obj.keys {
		if len(k) > len(name) && strings.HasPrefix(k, name) && k[len(name)] >= 'A' && k[len(name)] <= 'Z' && spec.DataTypes[k[len(name):]] != "" {
			return k
		}
	}
	return ""
}

// apply runs the patch on a resource of type typ and returns the result.
// A path that does not lead where its operation needs is a 422 naming the
// operation.
func (fp *fhirPatch) apply(typ string, body []byte) ([]byte, error) {
	root, err := decodeOrdered(body)
	if err != nil {
		return nil, err
	}
	obj, ok := root.(*jobject)
	if !ok {
		return nil, errors.New("stored resource is not an object")
	}
	for _, op := range fp.ops {
		if err := op.apply(obj, typ); err != nil {
			return nil, err
		}
	}
	var b bytes.Buffer
	encodeOrdered(&b, obj)
	return b.Bytes(), nil
}

// asJSONPatch applies the patch to body and returns the JSON Patch that
// replaces the resource with the result: how the write path applies it.
func (fp *fhirPatch) asJSONPatch(typ string, body []byte, where string) ([]byte, error) {
	doc, err := fp.apply(typ, body)
	if err != nil {
		var he *httpError
		if errors.As(err, &he) {
			for i := range he.issues {
				he.issues[i].Diagnostics = where + he.issues[i].Diagnostics
			}
		}
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(`[{"op":"replace","path":"","value":`)
	b.Write(doc)
	b.WriteString(`}]`)
	return b.Bytes(), nil
}

func (o *patchOp) fail(format string, args ...any) error {
	return errorf(http.StatusUnprocessableEntity, "%s%s", o.label(), fmt.Sprintf(format, args...))
}

// single is the one element the path leads to.
func (o *patchOp) single(root *jobject, typ string, steps []patchStep, src string) (loc, error) {
	ls := eval(root, typ, steps)
	switch len(ls) {
	case 0:
		return loc{}, o.fail("path %s matches no element", src)
	case 1:
		return ls[0], nil
	}
	return loc{}, o.fail("path %s matches %d elements, not one", src, len(ls))
}

// list finds the object holding the list an insert or move names, the
// list's element name, and the definition of the list items' type.
func (o *patchOp) list(root *jobject, typ string) (*jobject, string, string, error) {
	parentSteps, name := o.path[:len(o.path)-1], o.path[len(o.path)-1].name
	l, err := o.single(root, typ, parentSteps, "of "+o.src+" without its last step")
	if err != nil {
		return nil, "", "", err
	}
	obj, ok := l.get(root).(*jobject)
	if !ok {
		return nil, "", "", o.fail("path %s does not lead into an element", o.src)
	}
	if v, ok := obj.vals[name]; ok {
		if _, ok := v.([]any); !ok {
			return nil, "", "", o.fail("%s is not a list", o.src)
		}
	}
	return obj, name, childDef(l.def, name), nil
}

func (o *patchOp) apply(root *jobject, typ string) error {
	switch o.kind {
	case "add":
		l, err := o.single(root, typ, o.path, o.src)
		if err != nil {
			return err
		}
		obj, ok := l.get(root).(*jobject)
		if !ok {
			return o.fail("path %s does not lead to an element that can hold %s", o.src, o.name)
		}
		key, array := resolveName(l.def, obj, o.name, o.value.typ)
		val := o.value.build(childDef(l.def, key))
		switch cur := obj.vals[key].(type) {
		case nil:
			if array {
				obj.set(key, []any{val})
			} else {
				obj.set(key, val)
			}
		case []any:
			obj.vals[key] = append(cur, val)
		default:
			return o.fail("%s already has %s: replace it instead", o.src, key)
		}
	case "insert":
		obj, name, def, err := o.list(root, typ)
		if err != nil {
			return err
		}
		arr, _ := obj.vals[name].([]any)
		if o.index > len(arr) {
			return o.fail("index %d is past the end of %s (%d elements)", o.index, o.src, len(arr))
		}
		val := o.value.build(def)
		arr = append(arr, nil)
		copy(arr[o.index+1:], arr[o.index:])
		arr[o.index] = val
		obj.set(name, arr)
	case "move":
		obj, name, _, err := o.list(root, typ)
		if err != nil {
			return err
		}
		arr, _ := obj.vals[name].([]any)
		if o.from >= len(arr) || o.to >= len(arr) {
			return o.fail("source %d and destination %d must be below the %d elements of %s", o.from, o.to, len(arr), o.src)
		}
		v := arr[o.from]
		arr = append(arr[:o.from], arr[o.from+1:]...)
		arr = append(arr[:o.to], append([]any{v}, arr[o.to:]...)...)
		obj.vals[name] = arr
	case "delete":
		ls := eval(root, typ, o.path)
		if len(ls) == 0 {
			return nil // nothing to delete
		}
		if len(ls) > 1 {
			return o.fail("path %s matches %d elements: a delete removes one", o.src, len(ls))
		}
		l := ls[0]
		if l.parent == nil {
			return o.fail("the resource itself cannot be deleted")
		}
		if l.index >= 0 {
			arr := l.parent.vals[l.key].([]any)
			arr = append(arr[:l.index:l.index], arr[l.index+1:]...)
			if len(arr) == 0 {
				l.parent.remove(l.key)
			} else {
				l.parent.vals[l.key] = arr
			}
			if ext, ok := l.parent.vals["_"+l.key].([]any); ok && l.index < len(ext) {
				ext = append(ext[:l.index:l.index], ext[l.index+1:]...)
				l.parent.vals["_"+l.key] = ext
			}
			return nil
		}
		l.parent.remove(l.key)
		l.parent.remove("_" + l.key)
	case "replace":
		l, err := o.single(root, typ, o.path, o.src)
		if err != nil {
			return err
		}
		if l.parent == nil {
			return o.fail("the resource itself cannot be replaced")
		}
		if l.index >= 0 {
			l.parent.vals[l.key].([]any)[l.index] = o.value.build(l.def)
			return nil
		}
		key := l.key
		if l.base != "" && o.value.typ != "" {
			// A choice element takes the type of its new value.
			key = l.base + o.value.typ
		}
		val := o.value.build(childDef(l.pdef, key))
		l.parent.rename(l.key, key)
		l.parent.vals[key] = val
	}
	return nil
}

// build turns a value into JSON: a value[x] as given, parts as an object
// whose members are lists where the schema says so (def is the
// definition of the element's type).
func (v *patchValue) build(def string) any {
	if v.parts == nil {
		return v.v
	}
	obj := &jobject{vals: map[string]any{}}
	for _, p := range v.parts {
		key, array := resolveName(def, obj, p.name, p.val.typ)
		val := p.val.build(childDef(def, key))
		switch cur := obj.vals[key].(type) {
		case nil:
			if array {
				obj.set(key, []any{val})
			} else {
				obj.set(key, val)
			}
		case []any:
			obj.vals[key] = append(cur, val)
		default:
			obj.vals[key] = []any{cur, val}
		}
	}
	return obj
}

// resolveName returns the JSON member an element named name takes in an
// object of definition def, given the type suffix of its value: name
// itself, or name+type for a choice element (value + Quantity); and
// whether the element is a list.
func resolveName(def string, obj *jobject, name, typ string) (string, bool) {
	props := schemaDefs()[def]
	if p, ok := props[name]; ok {
		return name, p.array
	}
	if p, ok := props[name+typ]; ok && typ != "" {
		return name + typ, p.array
	}
	if props == nil && typ != "" {
		if k := choiceKey(obj, name); k != "" {
			return name + typ, false
		}
	}
	return name, false
}

// childDef is the definition of the type of element key of an object of
// definition def, "" when unknown.
func childDef(def, key string) string {
	if def == "" {
		return ""
	}
	return schemaDefs()[def][key].ref
}

// schemaProp is what the official JSON schema says of an element.
type schemaProp struct {
	ref   string // definition of its type
	array bool
}

// schemaDefs indexes the official JSON schema: for each definition (a
// resource type, a data type, a backbone element such as Patient_Contact)
// its elements. Loaded on first use.
var schemaDefs = sync.OnceValue(func() map[string]map[string]schemaProp {
	out := map[string]map[string]schemaProp{}
	data, err := spec.Schema()
	if err != nil {
		return out
	}
	type prop struct {
		Ref   string `json:"$ref"`
		Type  string `json:"type"`
		Items *struct {
			Ref string `json:"$ref"`
		} `json:"items"`
	}
	var doc struct {
		Definitions map[string]struct {
			Properties map[string]prop `json:"properties"`
		} `json:"definitions"`
	}
	if json.Unmarshal(data, &doc) != nil {
		return out
	}
	for name, d := range doc.Definitions {
		props := make(map[string]schemaProp, len(d.Properties))
		for k, p := range d.Properties {
			sp := schemaProp{ref: strings.TrimPrefix(p.Ref, "#/definitions/"), array: p.Type == "array"}
			if p.Items != nil {
				sp.ref = strings.TrimPrefix(p.Items.Ref, "#/definitions/")
			}
			props[k] = sp
		}
		out[name] = props
	}
	return out
})

// jobject is a JSON object that keeps its members' order, so that a patched
// resource keeps the order it was written in.
type jobject struct {
	keys []string
	vals map[string]any
}

// set sets key, appending it if new.
func (o *jobject) set(key string, v any) {
	if _, ok := o.vals[key]; !ok {
		o.keys = append(o.keys, key)
	}
	o.vals[key] = v
}

func (o *jobject) remove(key string) {
	if _, ok := o.vals[key]; !ok {
		return
	}
	delete(o.vals, key)
	for i, k := range o.keys {
		if k == key {
			o.keys = append(o.keys[:i], o.keys[i+1:]...)
			break
		}
	}
}

// rename gives member from the name to, in its place.
func (o *jobject) rename(from, to string) {
	if from == to {
		return
	}
	for i, k := range o.keys {
		if k == from {
			o.keys[i] = to
		}
	}
	o.vals[to] = o.vals[from]
	delete(o.vals, from)
}

// maxDepth bounds the nesting of decoded JSON.
const maxDepth = 256

// decodeOrdered decodes one JSON value, objects as *jobject and numbers
// as json.Number.
func decodeOrdered(data []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	v, err := readOrdered(d, 0)
	if err != nil {
		return nil, describeJSONError(data, err)
	}
	if _, err := d.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the JSON value")
	}
	return v, nil
}

func readOrdered(d *json.Decoder, depth int) (any, error) {
	if depth > maxDepth {
		return nil, errors.New("JSON nested too deep")
	}
	tok, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &jobject{vals: map[string]any{}}
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				k, _ := kt.(string)
				v, err := readOrdered(d, depth+1)
				if err != nil {
					return nil, err
				}
				o.set(k, v)
			}
			if _, err := d.Token(); err != nil {
				return nil, err
			}
			return o, nil
		case '[':
			arr := []any{}
			for d.More() {
				v, err := readOrdered(d, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			if _, err := d.Token(); err != nil {
				return nil, err
			}
			return arr, nil
		}
		return nil, fmt.Errorf("unexpected %v", t)
	}
	return tok, nil
}

// encodeOrdered writes v as JSON, objects in their members' order.
func encodeOrdered(b *bytes.Buffer, v any) {
	switch v := v.(type) {
	case *jobject:
		b.WriteByte('{')
		for i, k := range v.keys {
			if i > 0 {
				b.WriteByte(',')
			}
			b.Write(marshal(k))
			b.WriteByte(':')
			encodeOrdered(b, v.vals[k])
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, x := range v {
			if i > 0 {
				b.WriteByte(',')
			}
			encodeOrdered(b, x)
		}
		b.WriteByte(']')
	case json.Number:
		b.WriteString(string(v))
	default:
		b.Write(marshal(v))
	}
}

// plain converts ordered JSON to the maps the FHIRPath evaluator reads.
func plain(v any) any {
	switch v := v.(type) {
	case *jobject:
		m := make(map[string]any, len(v.keys))
		for _, k := range v.keys {
			m[k] = plain(v.vals[k])
		}
		return m
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			out[i] = plain(x)
		}
		return out
	}
	return v
}
