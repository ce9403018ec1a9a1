package main

// The plugins and handlers compiled into omnigate register themselves with
// the gateway when imported.
import (
	_ "github.com/omnigate/omnigate/builtin/fhir"
)
