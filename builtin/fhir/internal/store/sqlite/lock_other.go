//go:build !unix

package sqlite

import "os"

// lockFile does nothing where flock is missing: keep to one process per
// store file there.
func lockFile(path string) (*os.File, error) { return nil, nil }
