// Command badversion claims an ABI version the host does not speak.
package main

//go:wasmexport omnigate_abi_version
func version() int32 { return 2 }

//go:wasmexport omnigate_start
func start() int32 { return 1 }

//go:wasmexport omnigate_on_request
func onRequest() int32 { return 0 }

func main() {}
