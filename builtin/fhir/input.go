package fhir

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// checkUTF8 refuses a body that is not valid UTF-8 (RFC 8259 and FHIR's
// JSON format require it; encoding/json would silently replace the bad
// bytes, storing something other than what was sent).
func checkUTF8(raw []byte) error {
	if utf8.Valid(raw) {
		return nil
	}
	i := 0
	for i < len(raw) {
		r, n := utf8.DecodeRune(raw[i:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		i += n
	}
	return fmt.Errorf("the body is not valid UTF-8 (at byte %d)", i)
}

// maxSafeInteger is the largest integer a JSON reader that uses IEEE-754
// doubles (JavaScript, most JSON libraries) keeps exactly: 2^53-1.
const maxSafeInteger = 1<<53 - 1

// checkNumbers finds the numbers of a decoded resource that a JSON reader
// using doubles would not keep exactly: integers beyond ±(2^53-1), and
// decimals whose value differs from that of the nearest double (more
// significant digits than a double holds, or out of its range). FHIR's
// integer and decimal must keep their value and precision; such a number
// is one issue each, at its location.
//
// The walk keeps the path as segments and writes it out only for a number
// at fault: it runs on every write, and nearly every resource has none.
func checkNumbers(tree map[string]any, where string) []issue {
	rt, _ := tree["resourceType"].(string)
	var issues []issue
	type seg struct {
		key   string // an element, or "" for an index
		index int
	}
	var segs []seg
	path := func() string {
		var b strings.Builder
		b.WriteString(rt)
		for _, s := range segs {
			if s.key != "" {
				b.WriteString("." + s.key)
			} else {
				b.WriteString("[" + strconv.Itoa(s.index) + "]")
			}
		}
		return b.String()
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				segs = append(segs, seg{key: k})
				walk(x)
				segs = segs[:len(segs)-1]
			}
		case []any:
			for i, x := range v {
				segs = append(segs, seg{index: i})
				walk(x)
				segs = segs[:len(segs)-1]
			}
		case json.Number:
			if msg := numberProblem(string(v)); msg != "" {
				is := newIssue(http.StatusBadRequest, where+msg)
				is.Code = "value"
				is.Expression = []string{path()}
				issues = append(issues, is)
			}
		}
	}
	walk(tree)
	return issues
}

// numberProblem says what is wrong with the JSON number s, or "".
func numberProblem(s string) string {
	if !strings.ContainsAny(s, ".eE") {
		digits := strings.TrimPrefix(s, "-")
		if len(digits) > 16 {
			return fmt.Sprintf("the integer %s is beyond ±%d, the range a JSON number keeps exactly", shorten(s), maxSafeInteger)
		}
		n, err := strconv.ParseInt(digits, 10, 64)
		if err != nil || n > maxSafeInteger {
			return fmt.Sprintf("the integer %s is beyond ±%d, the range a JSON number keeps exactly", shorten(s), maxSafeInteger)
		}
		return ""
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return fmt.Sprintf("the decimal %s is out of the range of a JSON number", shorten(s))
	}
	if !sameDecimal(s, strconv.FormatFloat(f, 'g', -1, 64)) {
		return fmt.Sprintf("the decimal %s has more precision than a JSON number keeps (it would read as %s)", shorten(s), strconv.FormatFloat(f, 'g', -1, 64))
	}
	return ""
}

func shorten(s string) string {
	if len(s) > 40 {
		return s[:37] + "..."
	}
	return s
}

// sameDecimal reports whether two decimal numbers have the same value
// (1.50 and 1.5e0 do), comparing their significant digits and exponents
// without arithmetic.
func sameDecimal(a, b string) bool {
	an, ad, ae, ok1 := normDecimal(a)
	bn, bd, be, ok2 := normDecimal(b)
	if !ok1 || !ok2 {
		return false
	}
	if ad == "" || bd == "" { // zero
		return ad == bd
	}
	return an == bn && ad == bd && ae == be
}

// normDecimal splits a JSON number into its sign, its significant digits
// (no leading or trailing zeros; "" for zero) and the exponent of the
// first of them.
func normDecimal(s string) (neg bool, digits string, exp int, ok bool) {
	if strings.HasPrefix(s, "-") {
		neg, s = true, s[1:]
	}
	mant, e, hasExp := strings.Cut(strings.ToLower(s), "e")
	if hasExp {
		n, err := strconv.Atoi(strings.TrimPrefix(e, "+"))
		if err != nil || n > 1<<20 || n < -(1<<20) {
			return false, "", 0, false
		}
		exp = n
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	all := intPart + frac
	exp += len(intPart)
	lead := len(all) - len(strings.TrimLeft(all, "0"))
	all = all[lead:]
	exp -= lead
	all = strings.TrimRight(all, "0")
	return neg, all, exp, true
}
