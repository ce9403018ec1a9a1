package wasm

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// tinyModule assembles a WebAssembly module by hand: one page of memory
// (exported as "memory" when withMemory) and, for each export, a function
// () -> i32 that returns the given constant. No toolchain and no runtime:
// it compiles in microseconds and shows that the ABI needs nothing from Go.
func tinyModule(exports map[string]int32, withMemory bool) []byte {
	names := make([]string, 0, len(exports))
	for n := range exports {
		names = append(names, n)
	}
	sort.Strings(names)
	uleb := func(b []byte, v uint32) []byte {
		for {
			c := byte(v & 0x7f)
			v >>= 7
			if v != 0 {
				b = append(b, c|0x80)
				continue
			}
			return append(b, c)
		}
	}
	sleb := func(b []byte, v int32) []byte {
		for {
			c := byte(v & 0x7f)
			v >>= 7
			if (v == 0 && c&0x40 == 0) || (v == -1 && c&0x40 != 0) {
				return append(b, c)
			}
			b = append(b, c|0x80)
		}
	}
	section := func(out []byte, id byte, body []byte) []byte {
		out = append(out, id)
		out = uleb(out, uint32(len(body)))
		return append(out, body...)
	}
	out := []byte{0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00}
	out = section(out, 1, []byte{1, 0x60, 0, 1, 0x7f}) // type 0: () -> i32
	funcs := uleb(nil, uint32(len(names)))
	for range names {
		funcs = append(funcs, 0)
	}
	out = section(out, 3, funcs)
	out = section(out, 5, []byte{1, 0, 1}) // memory: min 1 page
	n := len(names)
	if withMemory {
		n++
	}
	exp := uleb(nil, uint32(n))
	for i, name := range names {
		exp = uleb(exp, uint32(len(name)))
		exp = append(exp, name...)
		exp = append(exp, 0) // function
		exp = uleb(exp, uint32(i))
	}
	if withMemory {
		exp = append(exp, 6, 'm', 'e', 'm', 'o', 'r', 'y', 2, 0)
	}
	out = section(out, 7, exp)
	code := uleb(nil, uint32(len(names)))
	for _, name := range names {
		body := append([]byte{0, 0x41}, sleb(nil, exports[name])...) // no locals; i32.const
		body = append(body, 0x0b)                                    // end
		code = uleb(code, uint32(len(body)))
		code = append(code, body...)
	}
	return section(out, 10, code)
}

var (
	allowAll   = tinyModule(map[string]int32{"omnigate_abi_version": 1, "omnigate_start": 1, "omnigate_on_request": 0}, true)
	badVersion = tinyModule(map[string]int32{"omnigate_abi_version": 2, "omnigate_start": 1, "omnigate_on_request": 0}, true)
	noExport   = tinyModule(map[string]int32{"omnigate_abi_version": 1, "omnigate_start": 1}, true)
	noMemory   = tinyModule(map[string]int32{"omnigate_abi_version": 1, "omnigate_start": 1, "omnigate_on_request": 0}, false)
	badAction  = tinyModule(map[string]int32{"omnigate_abi_version": 1, "omnigate_start": 1, "omnigate_on_request": 7}, true)
)

// moduleFile writes module bytes to a file for tests that need a path.
func moduleFile(t testing.TB, name string, code []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name+".wasm")
	if err := os.WriteFile(p, code, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestTinyModule(t *testing.T) {
	p, err := New(context.Background(), Options{Name: "tiny", Module: allowAll, Instances: 1, Logger: discard})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if w := serve(p, "GET", "/fhir/R4/Patient/1"); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
}
