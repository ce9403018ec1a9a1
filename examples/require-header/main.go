// Command require-header is the hello world of OmniGate policy plugins: it
// denies requests that lack a header named in its config.
//
// Build it with "omnigate plugin build ./examples/require-header".
package main

import (
	"errors"

	"github.com/omnigate/omnigate/sdk/wasm"
)

// config is the plugin's "config" key in omnigate.yaml.
var config struct {
	// Header must be present on every request. Required.
	Header string `json:"header"`
	// Status answers requests without it. Default 400.
	Status int `json:"status"`
}

func init() {
	wasm.OnStart(func() error {
		config.Status = 400
		if err := wasm.DecodeConfig(&config); err != nil {
			return err
		}
		if config.Header == "" {
			return errors.New("config: header is required")
		}
		if config.Status < 400 || config.Status > 599 {
			return errors.New("config: status must be 400 to 599")
		}
		return nil
	})
	wasm.OnRequest(func(r *wasm.Request) {
		if r.Header.Get(config.Header) == "" {
			wasm.Count("denied", 1)
			r.Deny(config.Status, "missing required header "+config.Header)
		}
	})
}

func main() {}
