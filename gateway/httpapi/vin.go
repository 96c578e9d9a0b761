package httpapi

import "crypto/rand"

// vinAlphabet is ISO 3779's: digits and capitals without I, O and Q.
const vinAlphabet = "0123456789ABCDEFGHJKLMNPRSTUVWXYZ"

// RandomVIN makes up a well-formed VIN for a simulated car. The check digit (position 9) is
// computed as in North America, so the VINs look real to tools that verify it.
func RandomVIN() string {
	b := make([]byte, 17)
	r := make([]byte, 17)
	_, _ = rand.Read(r)
	for i := range b {
		b[i] = vinAlphabet[int(r[i])%len(vinAlphabet)]
	}
	b[8] = checkDigit(b)
	return string(b)
}

func checkDigit(vin []byte) byte {
	weights := [17]int{8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2}
	value := func(c byte) int {
		switch {
		case c >= '0' && c <= '9':
			return int(c - '0')
		case c >= 'A' && c <= 'H':
			return int(c-'A') + 1
		case c >= 'J' && c <= 'N':
			return int(c-'J') + 1
		case c == 'P':
			return 7
		case c == 'R':
			return 9
		case c >= 'S' && c <= 'Z':
			return int(c-'S') + 2
		}
		return 0
	}
	sum := 0
	for i, c := range vin {
		sum += value(c) * weights[i]
	}
	if d := sum % 11; d == 10 {
		return 'X'
	} else {
		return byte('0' + d)
	}
}
