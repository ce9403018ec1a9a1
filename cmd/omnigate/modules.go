package main

// The plugins and handlers compiled into omnigate register themselves with
// the gateway when imported.
import (
	_ "github.com/omnigate/omnigate/builtin/audit"
	_ "github.com/omnigate/omnigate/builtin/authz"
	_ "github.com/omnigate/omnigate/builtin/cache"
	_ "github.com/omnigate/omnigate/builtin/fhir"
	_ "github.com/omnigate/omnigate/builtin/ratelimit"
	_ "github.com/omnigate/omnigate/builtin/session"
	_ "github.com/omnigate/omnigate/plugins/external"
	_ "github.com/omnigate/omnigate/plugins/wasm"
)
