// Command failing-plugin is a Wasm policy plugin that fails on purpose, for
// the tests of "omnigate plugin test": it panics on requests with the
// header X-Panic, after logging a line.
package main

import "github.com/omnigate/omnigate/sdk/wasm"

func init() {
	wasm.OnRequest(func(r *wasm.Request) {
		if v := r.Header.Get("X-Panic"); v != "" {
			wasm.Infof("about to panic")
			panic("failing-plugin: " + v)
		}
	})
}

func main() {}
