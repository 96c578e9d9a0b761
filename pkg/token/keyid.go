package token

import "strings"

// A token's id (jti) is the id of the key that signed it, a dot, and a random UUID: whoever
// keeps only a token's id (the gateway keeps each car's) knows which signing key the token
// depends on, so that a key is not retired while a car still holds a token it signed.

// newTokenID makes a token id for the key kid.
func newTokenID(kid, random string) string { return kid + "." + random }

// KeyIDOf returns the id of the key that signed the token with id jti, or "" for a token id
// made before ids named their key.
func KeyIDOf(jti string) string {
	kid, _, ok := strings.Cut(jti, ".")
	if !ok {
		return ""
	}
	return kid
}
