// Command badaction answers its request handler with an action ABI v1
// does not define.
package main

//go:wasmexport omnigate_abi_version
func version() int32 { return 1 }

//go:wasmexport omnigate_start
func start() int32 { return 1 }

//go:wasmexport omnigate_on_request
func onRequest() int32 { return 7 }

func main() {}
