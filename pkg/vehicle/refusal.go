package vehicle

import (
	"errors"

	"telematics/pkg/protocol"
)

// stateRefusal is a refusal because of the car's state, not of who asks: reason forbidden (the
// closed list has no other), and a message for the user that says what the state forbids. It
// travels in the result's Message, which a refusal for any other reason leaves empty.
type stateRefusal struct {
	msg string
	err error
}

func (e *stateRefusal) Error() string { return e.err.Error() }
func (e *stateRefusal) Unwrap() error { return e.err }

// refuseForState refuses with forbidden and msg, which the user is shown.
func refuseForState(msg string) error {
	return &stateRefusal{msg: msg, err: protocol.Refuse(protocol.ReasonForbidden, "%s", msg)}
}

// stateMessage is the user's message of a refusal for the car's state, "" for any other error.
func stateMessage(err error) string {
	var sr *stateRefusal
	if errors.As(err, &sr) {
		return sr.msg
	}
	return ""
}
