package protocol

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// CarMessage bounds a car's message (Result.Message) to MaxMessageBytes of printable text,
// cut at a whole character: what the gateway relays in a Reply and what a phone prints of an
// answer that came over the local link, which no gateway checked.
func CarMessage(s string) string {
	var b strings.Builder
	for _, c := range s {
		if b.Len()+utf8.RuneLen(c) > MaxMessageBytes {
			break
		}
		if unicode.IsPrint(c) {
			b.WriteRune(c)
		}
	}
	return b.String()
}
