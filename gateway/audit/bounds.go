package audit

import (
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Bounds on what one record may hold. Many fields come from strangers (a user name typed at
// login, a client id, a car's journal), so each is cut to its bound before it is stored, with
// truncMarker and the number of bytes left out, and the whole record is bounded too: the log
// cannot be made to grow faster than MaxRecordBytes per record, whatever is sent.
const (
	// MaxFieldBytes bounds each field but Detail.
	MaxFieldBytes = 256
	// MaxDetailBytes bounds Detail.
	MaxDetailBytes = 1024
	// MaxRecordBytes bounds a stored record (its JSON encoding).
	MaxRecordBytes = 4096
)

// truncMarker ends a field that was cut; the number of bytes left out follows it.
const truncMarker = "…[truncated "

// bounded returns e with every field cut to its bound.
func bounded(e Event) Event {
	for _, f := range []*string{&e.Kind, &e.User, &e.ClientID, &e.VIN, &e.CmdID, &e.Action, &e.Outcome, &e.Reason} {
		*f = truncate(*f, MaxFieldBytes)
	}
	e.Detail = truncate(e.Detail, MaxDetailBytes)
	return e
}

// encode returns e's stored form, at most MaxRecordBytes long. The field bounds keep the raw
// bytes under it, but JSON escaping can multiply them by six (a control byte is \u0000): such
// a record is cut further, field by field, until it fits.
func encode(e Event) ([]byte, error) {
	e = bounded(e)
	for limit := MaxFieldBytes / 2; ; limit /= 2 {
		v, err := json.Marshal(e)
		if err != nil || len(v) <= MaxRecordBytes {
			return v, err
		}
		if limit < len(truncMarker)+8 {
			return nil, fmt.Errorf("audit record of %d bytes cannot be bounded to %d", len(v), MaxRecordBytes)
		}
		for _, f := range []*string{&e.User, &e.ClientID, &e.VIN, &e.CmdID, &e.Action, &e.Outcome, &e.Reason, &e.Detail} {
			*f = truncate(*f, limit)
		}
	}
}

// truncate cuts s to at most max bytes, marker included, on a rune boundary.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	// The marker and the count ("…[truncated 60000 bytes]") take at most this much.
	keep := max - len(truncMarker) - len("99999999999 bytes]")
	if keep < 0 {
		keep = 0
	}
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return fmt.Sprintf("%s%s%d bytes]", s[:keep], truncMarker, len(s)-keep)
}
