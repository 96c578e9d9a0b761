package twofa

import (
	"telematics/gateway/kv"
)

// EndUserSessions ends every step-up elevation of user: the gateway calls it when the user's
// tokens are ended (password changed, account disabled or deleted).
func (s *Service) EndUserSessions(user string) { s.endUserSessions(user) }

// RemoveUserTx deletes user's enrollment and lockout inside tx, the transaction that deletes
// the user, so that a user created later under the same name starts with neither. Call
// EndUserSessions once tx has committed.
func (s *Service) RemoveUserTx(tx kv.Tx, user string) error {
	if err := checkUser(user); err != nil {
		return err
	}
	if err := deleteTOTP(tx, user); err != nil {
		return err
	}
	return tx.Delete(bucketLockout, []byte(user))
}
