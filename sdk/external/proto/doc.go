// Package proto is the Go code generated from policy.proto, the gRPC
// contract between OmniGate and external policy plugins. Regenerate it with
// "make proto". Plugin authors use sdk/external instead.
package proto
