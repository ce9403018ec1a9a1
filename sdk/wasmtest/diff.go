package wasmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
)

// diff returns a line diff of want and got: lines only in want start with
// "- ", lines only in got with "+ ", common lines with "  ". Bodies that
// are both JSON are compared indented, one member per line; a one-line
// text is shown whole, with the offset of the first difference.
func diff(want, got string) []string {
	if w, g, ok := indentJSON(want, got); ok {
		want, got = w, g
	}
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	if len(wl) == 1 && len(gl) == 1 {
		i := 0
		for i < len(want) && i < len(got) && want[i] == got[i] {
			i++
		}
		return []string{fmt.Sprintf("- %q", want), fmt.Sprintf("+ %q", got), fmt.Sprintf("  (first difference at byte %d)", i)}
	}
	// Longest common subsequence of lines; bodies in tests are small, and
	// larger ones are cut to keep this quadratic table bounded.
	const maxLines = 400
	if len(wl) > maxLines || len(gl) > maxLines {
		wl, gl = wl[:min(len(wl), maxLines)], gl[:min(len(gl), maxLines)]
	}
	lcs := make([][]int, len(wl)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(gl)+1)
	}
	for i := len(wl) - 1; i >= 0; i-- {
		for j := len(gl) - 1; j >= 0; j-- {
			if wl[i] == gl[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out []string
	i, j := 0, 0
	for i < len(wl) || j < len(gl) {
		switch {
		case i < len(wl) && j < len(gl) && wl[i] == gl[j]:
			out = append(out, "  "+wl[i])
			i, j = i+1, j+1
		case i < len(wl) && (j == len(gl) || lcs[i+1][j] >= lcs[i][j+1]):
			out = append(out, "- "+wl[i])
			i++
		default:
			out = append(out, "+ "+gl[j])
			j++
		}
	}
	return out
}

// indentJSON indents want and got when both are JSON.
func indentJSON(want, got string) (string, string, bool) {
	var w, g bytes.Buffer
	if json.Indent(&w, []byte(want), "", "  ") != nil || json.Indent(&g, []byte(got), "", "  ") != nil {
		return "", "", false
	}
	return w.String(), g.String(), true
}

func indent(lines []string) []string {
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return lines
}

// checkBodyJSON checks that body is JSON holding want (see Expect.BodyJSON).
func checkBodyJSON(want any, body string) []string {
	var got any
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		return []string{fmt.Sprintf("body is not JSON (%v), want one holding %s", err, compact(want))}
	}
	// YAML numbers decode as int, JSON numbers as float64: compare both
	// through JSON.
	b, err := json.Marshal(want)
	if err != nil {
		return []string{fmt.Sprintf("body_json: %v", err)}
	}
	json.Unmarshal(b, &want)
	var bad []string
	matchJSON("body", want, got, &bad)
	return bad
}

// matchJSON reports where got does not hold want: objects by the members
// of want, anything else exactly.
func matchJSON(at string, want, got any, bad *[]string) {
	if wm, ok := want.(map[string]any); ok {
		gm, ok := got.(map[string]any)
		if !ok {
			*bad = append(*bad, fmt.Sprintf("%s = %s, want an object holding %s", at, compact(got), compact(want)))
			return
		}
		for k, wv := range wm {
			gv, ok := gm[k]
			if !ok {
				*bad = append(*bad, fmt.Sprintf("%s.%s is absent, want %s", at, k, compact(wv)))
				continue
			}
			matchJSON(at+"."+k, wv, gv, bad)
		}
		return
	}
	if !reflect.DeepEqual(want, got) {
		*bad = append(*bad, fmt.Sprintf("%s = %s, want %s", at, compact(got), compact(want)))
	}
}

func compact(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}
