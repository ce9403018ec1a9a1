// Package plural writes counts with the right noun form: "1 sink",
// "2 sinks", "0 policies".
package plural

import "strconv"

// Of returns n followed by singular when n is 1 and by the plural form
// otherwise: singular+"s", unless plural is given.
func Of[N ~int | ~int64 | ~uint64](n N, singular string, plural ...string) string {
	s := strconv.FormatInt(int64(n), 10) + " "
	if n == 1 {
		return s + singular
	}
	if len(plural) > 0 {
		return s + plural[0]
	}
	return s + singular + "s"
}
