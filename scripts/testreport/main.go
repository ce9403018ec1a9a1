// Command testreport reads `go test -json` on standard input and prints
// what a person wants from a long test run: one line per package, the
// whole output of every failing test (and of packages that failed to build
// or panicked), and at the end the slowest tests, so that the run's time
// can be traced to them. It exits 1 when anything failed.
//
//	go test -race -json ./... | go run ./scripts/testreport [-slowest 15]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// event is one line of test2json output.
type event struct {
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string
}

type result struct {
	pkg, test string
	elapsed   float64
}

func main() {
	slowest := flag.Int("slowest", 15, "how many of the slowest tests to list")
	flag.Parse()
	os.Exit(report(os.Stdin, os.Stdout, *slowest))
}

func report(in io.Reader, out io.Writer, slowest int) int {
	start := time.Now()
	output := map[string][]string{} // package/test -> its output lines
	var tests []result
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if json.Unmarshal(line, &e) != nil {
			fmt.Fprintln(out, string(line)) // not JSON: go vet or build output
			continue
		}
		pkg := e.Package
		if pkg == "" {
			pkg = e.ImportPath
		}
		key := pkg + "\x00" + e.Test
		switch e.Action {
		case "output", "build-output":
			output[key] = append(output[key], e.Output)
		case "pass", "skip":
			if e.Test == "" {
				fmt.Fprintf(out, "ok   %s %.1fs\n", pkg, e.Elapsed)
			} else if !strings.Contains(e.Test, "/") {
				tests = append(tests, result{pkg, e.Test, e.Elapsed})
			}
			delete(output, key)
		case "fail", "build-fail":
			failed = true
			if e.Test == "" {
				// The package's own output holds panics and build errors.
				io.WriteString(out, strings.Join(output[key], ""))
				fmt.Fprintf(out, "FAIL %s %.1fs\n", pkg, e.Elapsed)
			} else {
				io.WriteString(out, strings.Join(output[key], ""))
			}
			delete(output, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "testreport:", err)
		return 1
	}
	sort.Slice(tests, func(i, j int) bool { return tests[i].elapsed > tests[j].elapsed })
	if len(tests) > slowest {
		tests = tests[:slowest]
	}
	if len(tests) > 0 {
		fmt.Fprintln(out, "\nslowest tests:")
		for _, t := range tests {
			fmt.Fprintf(out, "  %6.1fs  %s %s\n", t.elapsed, t.pkg, t.test)
		}
	}
	fmt.Fprintf(out, "\n%s in %s\n", map[bool]string{false: "PASS", true: "FAIL"}[failed], time.Since(start).Round(time.Second))
	if failed {
		return 1
	}
	return 0
}
