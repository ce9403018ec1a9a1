package cache

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"
)

// entry is a stored response.
type entry struct {
	Status  int
	Header  http.Header // end-to-end headers only
	Body    []byte
	Stored  time.Time
	Fresh   time.Duration // served as fresh until Stored+Fresh
	Stale   time.Duration // kept for stale-if-error until Stored+Fresh+Stale
	Tags    []string
	Version []int64 // the tags' versions when the response was made
}

func (e *entry) fresh(now time.Time) bool { return now.Before(e.Stored.Add(e.Fresh)) }

func (e *entry) usableStale(now time.Time) bool {
	return now.Before(e.Stored.Add(e.Fresh + e.Stale))
}

// size approximates the memory the entry holds.
func (e *entry) size() int {
	n := len(e.Body) + 128
	for k, vs := range e.Header {
		n += len(k)
		for _, v := range vs {
			n += len(v) + 16
		}
	}
	for _, t := range e.Tags {
		n += len(t) + 24
	}
	return n
}

// current reports whether the entry's tag versions equal versions.
func (e *entry) current(versions []int64) bool {
	if len(versions) != len(e.Version) {
		return false
	}
	for i, v := range versions {
		if e.Version[i] != v {
			return false
		}
	}
	return true
}

const entryFormat = 1

// encode serializes the entry: a small binary header, then the body.
func (e *entry) encode() []byte {
	hdr, _ := json.Marshal(e.Header)
	tags := strings.Join(e.Tags, "\n")
	buf := make([]byte, 0, 64+len(hdr)+len(tags)+8*len(e.Version)+len(e.Body))
	buf = append(buf, entryFormat)
	buf = binary.AppendUvarint(buf, uint64(e.Status))
	buf = binary.AppendVarint(buf, e.Stored.UnixMilli())
	buf = binary.AppendVarint(buf, int64(e.Fresh/time.Millisecond))
	buf = binary.AppendVarint(buf, int64(e.Stale/time.Millisecond))
	buf = appendBytes(buf, hdr)
	buf = appendBytes(buf, []byte(tags))
	buf = binary.AppendUvarint(buf, uint64(len(e.Version)))
	for _, v := range e.Version {
		buf = binary.AppendVarint(buf, v)
	}
	return append(buf, e.Body...)
}

func appendBytes(buf, b []byte) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(b)))
	return append(buf, b...)
}

var errCorrupt = errors.New("cache entry is corrupt")

func decodeEntry(b []byte) (*entry, error) {
	if len(b) == 0 || b[0] != entryFormat {
		return nil, errCorrupt
	}
	b = b[1:]
	var ok = true
	uv := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			ok = false
			return 0
		}
		b = b[n:]
		return v
	}
	sv := func() int64 {
		v, n := binary.Varint(b)
		if n <= 0 {
			ok = false
			return 0
		}
		b = b[n:]
		return v
	}
	bytesOf := func() []byte {
		n := uv()
		if !ok || n > uint64(len(b)) {
			ok = false
			return nil
		}
		out := b[:n]
		b = b[n:]
		return out
	}
	e := &entry{Status: int(uv())}
	e.Stored = time.UnixMilli(sv())
	e.Fresh = time.Duration(sv()) * time.Millisecond
	e.Stale = time.Duration(sv()) * time.Millisecond
	hdr := bytesOf()
	tags := bytesOf()
	nv := uv()
	if !ok || nv > 64 {
		return nil, errCorrupt
	}
	for i := uint64(0); i < nv; i++ {
		e.Version = append(e.Version, sv())
	}
	if !ok {
		return nil, errCorrupt
	}
	if err := json.Unmarshal(hdr, &e.Header); err != nil {
		return nil, errCorrupt
	}
	if len(tags) > 0 {
		e.Tags = strings.Split(string(tags), "\n")
	}
	e.Body = b
	return e, nil
}

// bundleWrite is one write entry of a batch or transaction Bundle.
type bundleWrite struct {
	typ, id  string
	resource []byte
}

// bundleWrites lists the writes of a Bundle body (nil when it is not one).
func bundleWrites(body []byte) []bundleWrite {
	var b struct {
		ResourceType string `json:"resourceType"`
		Entry        []struct {
			Resource json.RawMessage `json:"resource"`
			Request  struct {
				Method string `json:"method"`
				URL    string `json:"url"`
			} `json:"request"`
		} `json:"entry"`
	}
	if json.Unmarshal(body, &b) != nil || b.ResourceType != "Bundle" {
		return nil
	}
	var out []bundleWrite
	for _, e := range b.Entry {
		switch strings.ToUpper(e.Request.Method) {
		case "POST", "PUT", "PATCH", "DELETE":
		default:
			continue
		}
		u, _, _ := strings.Cut(e.Request.URL, "?")
		typ, id, _ := strings.Cut(strings.Trim(u, "/"), "/")
		id, _, _ = strings.Cut(id, "/")
		if typ == "" {
			continue
		}
		out = append(out, bundleWrite{typ: typ, id: id, resource: e.Resource})
	}
	return out
}
