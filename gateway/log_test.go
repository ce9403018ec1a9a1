package gateway

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// TestLoggerWritesHumanDurations: a duration in a log line reads "1.5s" in
// both formats, never a count of nanoseconds.
func TestLoggerWritesHumanDurations(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		var b bytes.Buffer
		NewLogger(LogConfig{Format: format}, &b).Info("warmed", "duration", 1500*time.Millisecond)
		if !strings.Contains(b.String(), "1.5s") || strings.Contains(b.String(), "1500000000") {
			t.Errorf("%s: %s", format, b.String())
		}
	}
}
