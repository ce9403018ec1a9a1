package gateway

import (
	"fmt"
	"net/http"
	"path"
	"sort"
	"strings"

	"github.com/julienschmidt/httprouter"
)

// router matches requests to routes on httprouter trees. httprouter refuses
// overlapping patterns in one tree (/fhir/R4/metadata beside
// /fhir/R4/*path), so routes are sorted most specific first and spread over
// as few trees ("layers") as needed; the first layer that matches wins.
type router struct {
	layers []*httprouter.Router
}

type routeEntry struct {
	method, path string
	handle       httprouter.Handle
	idx          int // route index, for messages
}

// specificity orders patterns: static before parameter before catch-all,
// then longer literal prefixes first.
func specificity(p string) (wild int, prefix int) {
	i := strings.IndexAny(p, ":*")
	if i < 0 {
		return 0, len(p)
	}
	if strings.Contains(p, "*") {
		return 2, i
	}
	return 1, i
}

// routeSpec is something to route: a config route or an endpoint a plugin
// mounted.
type routeSpec struct {
	path    string
	methods []string
	handle  httprouter.Handle
	// errorf builds an error that points at where the route was defined.
	errorf func(format string, args ...any) error
	desc   string
}

// configRouteSpecs returns the routes of cfg; handles[i] serves route i, and
// with handles nil every route gets a no-op handle (for validation).
func configRouteSpecs(cfg *Config, handles []httprouter.Handle) []routeSpec {
	specs := make([]routeSpec, len(cfg.Routes))
	for i := range cfg.Routes {
		rc := &cfg.Routes[i]
		var h httprouter.Handle = func(http.ResponseWriter, *http.Request, httprouter.Params) {}
		if handles != nil {
			h = handles[i]
		}
		key := fmt.Sprintf("routes[%d].path", i)
		specs[i] = routeSpec{
			path: rc.Path, methods: rc.Methods, handle: h,
			errorf: func(format string, args ...any) error { return cfg.Errorf(key, format, args...) },
			desc:   fmt.Sprintf("routes[%d]", i),
		}
	}
	return specs
}

// newRouter builds the layers for specs.
func newRouter(specs []routeSpec) (*router, error) {
	order := make([]int, len(specs))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool {
		wa, pa := specificity(specs[order[a]].path)
		wb, pb := specificity(specs[order[b]].path)
		if wa != wb {
			return wa < wb
		}
		return pa > pb
	})
	var layers [][]routeEntry
	seen := map[string]int{}
	for _, i := range order {
		rs := &specs[i]
		paths := []string{rs.path}
		// A catch-all route also answers its bare prefix: /fhir/R4/*path
		// serves /fhir/R4 too (a transaction is POSTed there).
		if j := strings.LastIndex(rs.path, "/*"); j > 0 && !strings.ContainsAny(rs.path[:j], ":*") {
			paths = append(paths, rs.path[:j])
		}
		var entries []routeEntry
		for _, m := range rs.methods {
			for _, p := range paths {
				key := m + " " + canonicalPattern(p)
				if j, dup := seen[key]; dup && p == rs.path {
					return nil, rs.errorf("%s %s is already served by %s", m, p, specs[j].desc)
				} else if dup {
					continue // the bare prefix belongs to the other route
				}
				seen[key] = i
				entries = append(entries, routeEntry{m, p, rs.handle, i})
			}
		}
		if err := tryLayer(nil, entries); err != nil {
			return nil, rs.errorf("invalid pattern: %v", err)
		}
		placed := false
		for l := range layers {
			if tryLayer(layers[l], entries) == nil {
				layers[l] = append(layers[l], entries...)
				placed = true
				break
			}
		}
		if !placed {
			layers = append(layers, entries)
		}
	}
	r := &router{}
	for _, entries := range layers {
		hr := httprouter.New()
		for _, e := range entries {
			hr.Handle(e.method, e.path, e.handle)
		}
		r.layers = append(r.layers, hr)
	}
	return r, nil
}

// canonicalPattern drops parameter names, so /a/:id and /a/:name (or
// /a/*x and /a/*y) are seen as the same pattern.
func canonicalPattern(p string) string {
	if !strings.ContainsAny(p, ":*") {
		return p
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if s != "" && (s[0] == ':' || s[0] == '*') {
			segs[i] = s[:1]
		}
	}
	return strings.Join(segs, "/")
}

// tryLayer reports whether entries fit in one httprouter tree with base.
func tryLayer(base, entries []routeEntry) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%v", v)
		}
	}()
	hr := httprouter.New()
	for _, e := range base {
		hr.Handle(e.method, e.path, e.handle)
	}
	for _, e := range entries {
		hr.Handle(e.method, e.path, e.handle)
	}
	return nil
}

// lookup finds the handle for method and path; allow lists the methods the
// path answers when method does not match.
func (r *router) lookup(method, p string) (h httprouter.Handle, ps httprouter.Params, allow []string) {
	for _, l := range r.layers {
		if h, ps, _ := l.Lookup(method, p); h != nil {
			return h, ps, nil
		}
	}
	for _, m := range validMethods {
		if m == method {
			continue
		}
		for _, l := range r.layers {
			if h, _, _ := l.Lookup(m, p); h != nil {
				allow = append(allow, m)
				break
			}
		}
	}
	return nil, nil, allow
}

// cleanPath returns p with empty, "." and ".." segments resolved, keeping a
// trailing slash, and whether it changed.
func cleanPath(p string) (string, bool) {
	if p == "" {
		return "/", true
	}
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") && p[0] == '/' {
		return p, false
	}
	c := path.Clean("/" + p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c, c != p
}
