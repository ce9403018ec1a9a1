module github.com/omnigate/omnigate/sdk/wasm

go 1.24
