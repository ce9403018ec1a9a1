// Command noexport lacks the request handler export.
package main

//go:wasmexport omnigate_abi_version
func version() int32 { return 1 }

//go:wasmexport omnigate_start
func start() int32 { return 1 }

func main() {}
