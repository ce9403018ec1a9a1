package search

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"

	"golang.org/x/text/runes"
	"golang.org/x/text/transform"
	"golang.org/x/text/unicode/norm"
)

// Normalize folds s for string search: accents removed, lower case, runs of
// white space collapsed.
func Normalize(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if !ascii {
		t := transform.Chain(norm.NFD, runes.Remove(runes.In(unicode.Mn)), norm.NFC)
		if r, _, err := transform.String(t, s); err == nil {
			s = r
		}
	}
	var b strings.Builder
	b.Grow(len(s))
	space := false
	for _, r := range strings.TrimSpace(s) {
		if unicode.IsSpace(r) {
			if !space {
				b.WriteByte(' ')
			}
			space = true
			continue
		}
		space = false
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// Date bounds are milliseconds since the Unix epoch; Hi is exclusive.
const (
	MinTime int64 = math.MinInt64 / 2
	MaxTime int64 = math.MaxInt64 / 2
)

// ErrDate reports a value that is not a FHIR date, dateTime or instant.
var ErrDate = errors.New("not a FHIR date (want YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss[.fff]][Z|±hh:mm])")

// ParseDate returns the range [lo, hi) in milliseconds that a FHIR date,
// dateTime or instant covers at its precision: "2015" is all of 2015,
// "2015-02-07T13:28:17Z" one second. Values without a time zone are taken
// as UTC.
func ParseDate(s string) (lo, hi int64, err error) {
	n := len(s)
	digits := func(i, j int) (int, bool) {
		if j > n {
			return 0, false
		}
		v := 0
		for k := i; k < j; k++ {
			if s[k] < '0' || s[k] > '9' {
				return 0, false
			}
			v = v*10 + int(s[k]-'0')
		}
		return v, true
	}
	year, ok := digits(0, 4)
	if !ok {
		return 0, 0, ErrDate
	}
	if n == 4 {
		t := time.Date(year, 1, 1, 0, 0, 0, 0, time.UTC)
		return t.UnixMilli(), t.AddDate(1, 0, 0).UnixMilli(), nil
	}
	month, ok := digits(5, 7)
	if !ok || s[4] != '-' || month < 1 || month > 12 {
		return 0, 0, ErrDate
	}
	if n == 7 {
		t := time.Date(year, time.Month(month), 1, 0, 0, 0, 0, time.UTC)
		return t.UnixMilli(), t.AddDate(0, 1, 0).UnixMilli(), nil
	}
	day, ok := digits(8, 10)
	if !ok || s[7] != '-' || day < 1 || day > daysIn(year, month) {
		return 0, 0, ErrDate
	}
	if n == 10 {
		t := time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC)
		return t.UnixMilli(), t.AddDate(0, 0, 1).UnixMilli(), nil
	}
	if s[10] != 'T' {
		return 0, 0, ErrDate
	}
	hour, ok1 := digits(11, 13)
	minute, ok2 := digits(14, 16)
	if !ok1 || !ok2 || s[13] != ':' || hour > 23 || minute > 59 {
		return 0, 0, ErrDate
	}
	i := 16
	sec, nsec := 0, 0
	step := time.Minute
	if i < n && s[i] == ':' {
		if sec, ok = digits(17, 19); !ok || sec > 60 {
			return 0, 0, ErrDate
		}
		i = 19
		step = time.Second
		if i < n && s[i] == '.' {
			j := i + 1
			for j < n && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			if j == i+1 {
				return 0, 0, ErrDate
			}
			frac := s[i+1 : j]
			if len(frac) > 9 {
				frac = frac[:9]
			}
			v, _ := strconv.Atoi(frac)
			for k := len(frac); k < 9; k++ {
				v *= 10
			}
			nsec = v
			step = time.Millisecond
			i = j
		}
	}
	loc := time.UTC
	switch {
	case i == n:
	case s[i] == 'Z' && i+1 == n:
	case (s[i] == '+' || s[i] == '-') && n == i+6 && s[i+3] == ':':
		hh, ok1 := digits(i+1, i+3)
		mm, ok2 := digits(i+4, i+6)
		if !ok1 || !ok2 || hh > 14 || mm > 59 {
			return 0, 0, ErrDate
		}
		off := hh*3600 + mm*60
		if s[i] == '-' {
			off = -off
		}
		loc = time.FixedZone("", off)
	default:
		return 0, 0, ErrDate
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, loc)
	lo = t.UnixMilli()
	return lo, t.Add(step).UnixMilli(), nil
}

func daysIn(year, month int) int {
	return time.Date(year, time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// numberRange returns the value of a decimal and the half-width its
// precision implies: "100" is 100±0.5, "1.50" is 1.5±0.005.
func numberRange(s string) (v, half float64, err error) {
	v, err = strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, 0, fmt.Errorf("%q is not a number", s)
	}
	mant, exp := s, 0
	if i := strings.IndexAny(s, "eE"); i >= 0 {
		mant = s[:i]
		exp, _ = strconv.Atoi(s[i+1:])
	}
	decimals := 0
	if i := strings.IndexByte(mant, '.'); i >= 0 {
		decimals = len(mant) - i - 1
	}
	return v, 0.5 * math.Pow(10, float64(exp-decimals)), nil
}
