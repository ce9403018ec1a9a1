package session

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"

	"github.com/omnigate/omnigate/sdk/wasm/fhirreq"
)

// User is one entry of the user directory file.
type User struct {
	Username string `yaml:"username"`
	// PasswordHash is a bcrypt hash ("omnigate user add" writes it).
	PasswordHash string `yaml:"password_hash"`
	Role         string `yaml:"role"`
	// Scopes are granted to the user's sessions (SMART scopes, e.g.
	// user/*.cruds or patient/*.rs).
	Scopes []string `yaml:"scopes,omitempty"`
	// Patient is the patient id of a patient user (or of the patient a
	// proxy user acts for).
	Patient string `yaml:"patient,omitempty"`
	// FHIRUser is the user's FHIR resource (Practitioner/12); a Patient
	// resource there sets Patient when it is empty.
	FHIRUser string `yaml:"fhir_user,omitempty"`
	// Disabled users cannot log in.
	Disabled bool `yaml:"disabled,omitempty"`
}

type userFile struct {
	Users []User `yaml:"users"`
}

// directory is the user directory file, read again when it changes.
type directory struct {
	path string

	mu    sync.RWMutex
	users map[string]*User
	stat  os.FileInfo
}

// dummyHash is compared against when a username is unknown, so that the
// answer takes as long as for a wrong password.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("omnigate-dummy-password"), bcrypt.DefaultCost)
	return h
})

func openDirectory(path string) (*directory, error) {
	d := &directory{path: path}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read user directory: %w", err)
	}
	if d.users, err = parseDirectory(path); err != nil {
		return nil, err
	}
	d.stat = st
	return d, nil
}

// parseDirectory reads and checks the file.
func parseDirectory(path string) (map[string]*User, error) {
	users, err := readUsers(path)
	if err != nil {
		return nil, err
	}
	m := make(map[string]*User, len(users))
	for i := range users {
		u := &users[i]
		if u.Username == "" {
			return nil, fmt.Errorf("%s: users[%d]: username is required", path, i)
		}
		if _, dup := m[u.Username]; dup {
			return nil, fmt.Errorf("%s: users[%d]: duplicate username %q", path, i, u.Username)
		}
		if _, err := bcrypt.Cost([]byte(u.PasswordHash)); err != nil {
			return nil, fmt.Errorf("%s: users[%d] (%s): password_hash is not a bcrypt hash", path, i, u.Username)
		}
		if u.Role == "" {
			return nil, fmt.Errorf("%s: users[%d] (%s): role is required", path, i, u.Username)
		}
		m[u.Username] = u
	}
	return m, nil
}

// reload reads the file again when it changed (another size, modification
// time or file: an atomic replace is a new file) and returns the users
// before and after. changed is false when the file is as last read; a file
// that no longer parses is an error and the old users stay.
func (d *directory) reload() (before, after map[string]*User, changed bool, err error) {
	st, err := os.Stat(d.path)
	if err != nil {
		return nil, nil, false, fmt.Errorf("read user directory: %w", err)
	}
	d.mu.RLock()
	same := os.SameFile(st, d.stat) && st.ModTime().Equal(d.stat.ModTime()) && st.Size() == d.stat.Size()
	d.mu.RUnlock()
	if same {
		return nil, nil, false, nil
	}
	users, err := parseDirectory(d.path)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stat = st // a broken file is reported once, not on every check
	if err != nil {
		return nil, nil, false, err
	}
	before, d.users = d.users, users
	return before, users, true, nil
}

// lookup returns the user named username, or nil. The User must not be
// modified.
func (d *directory) lookup(username string) *User {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.users[username]
}

// authenticate checks a username and password in constant time with
// respect to whether the user exists.
func (d *directory) authenticate(username, password string) (*User, bool) {
	u := d.lookup(username)
	var hash []byte
	if u != nil {
		hash = []byte(u.PasswordHash)
	} else {
		hash = dummyHash()
	}
	ok := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil
	if u == nil || !ok || u.Disabled {
		return nil, false
	}
	c := *u
	return &c, true
}

// grants reports whether a session holds what u would get at login now:
// the same role, scopes, patient and FHIR user.
func (u *User) grants(r *Record) bool {
	return u.Role == r.Role && slices.Equal(u.Scopes, r.Scopes) &&
		patientOf(u.Patient, u.FHIRUser) == r.PatientID && u.FHIRUser == r.FHIRUser
}

func readUsers(path string) ([]User, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read user directory: %w", err)
	}
	var f userFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f.Users, nil
}

// writeUsers replaces the file atomically, readable by its owner only.
func writeUsers(path string, users []User) error {
	sort.SliceStable(users, func(i, j int) bool { return users[i].Username < users[j].Username })
	data, err := yaml.Marshal(userFile{Users: users})
	if err != nil {
		return err
	}
	header := "# OmniGate user directory. Add users with: omnigate user add -file " + path + " -username NAME -role ROLE\n"
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write user directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".users-*.yaml")
	if err != nil {
		return fmt.Errorf("write user directory: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(header + string(data)); err != nil {
		tmp.Close()
		return fmt.Errorf("write user directory: %w", err)
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// AddUser adds or replaces a user in the directory file at path (created
// if missing), storing a bcrypt hash of password at the given cost
// (0: bcrypt.DefaultCost).
func AddUser(path string, u User, password string, cost int) error {
	_, err := EditUser(path, u.Username, password, cost, func(x *User, _ bool) error {
		*x = u
		return nil
	})
	return err
}

// EditUser adds or updates the user named username in the directory file
// at path (created if missing). edit receives the stored user (or a new one
// holding only the name, with exists false) and changes what it means to;
// the rest is kept. A non-empty password replaces the stored hash (bcrypt
// at cost, 0: bcrypt.DefaultCost); a new user needs one of at least 8
// characters, and a role. It reports whether the user existed.
func EditUser(path, username, password string, cost int, edit func(u *User, exists bool) error) (existed bool, err error) {
	if username == "" {
		return false, errors.New("edit user: username is required")
	}
	users, err := readUsers(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	i := slices.IndexFunc(users, func(x User) bool { return x.Username == username })
	u := User{Username: username}
	if existed = i >= 0; existed {
		u = users[i]
	}
	if err := edit(&u, existed); err != nil {
		return existed, err
	}
	u.Username = username
	if u.Role == "" {
		return existed, errors.New("edit user: a role is required")
	}
	if password != "" || !existed {
		if len(password) < 8 {
			return existed, errors.New("edit user: the password must have at least 8 characters")
		}
		if cost == 0 {
			cost = bcrypt.DefaultCost
		}
		hash, err := bcrypt.GenerateFromPassword([]byte(password), cost)
		if err != nil {
			return existed, fmt.Errorf("edit user: %w", err)
		}
		u.PasswordHash = string(hash)
	}
	if existed {
		users[i] = u
	} else {
		users = append(users, u)
	}
	return existed, writeUsers(path, users)
}

// RandomPassword returns 18 random bytes from crypto/rand, base64url: 24
// characters.
func RandomPassword() string {
	var b [18]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// createFirstRun writes a directory with one user per role, named after
// the role, with random passwords, and prints them once to console. The
// users carry no scopes: their role's apply. The patient user is the
// patient id given.
func createFirstRun(path string, roles []string, patient string, console io.Writer) error {
	var users []User
	type cred struct{ user, pass string }
	var creds []cred
	for _, role := range roles {
		pass := RandomPassword()
		hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
		if err != nil {
			return err
		}
		// No scopes of their own: what each may do is their role's
		// (the authz plugin's roles), which a user's scopes could only
		// narrow.
		u := User{Username: role, PasswordHash: string(hash), Role: role}
		if role == "patient" {
			u.Patient = patient
		}
		users = append(users, u)
		creds = append(creds, cred{role, pass})
	}
	if err := writeUsers(path, users); err != nil {
		return err
	}
	fmt.Fprintf(console, "\nOmniGate created the user directory %s with one user per role.\n", path)
	fmt.Fprintln(console, "These passwords are shown only now; change them with omnigate user add.")
	for _, c := range creds {
		fmt.Fprintf(console, "  %-10s %s\n", c.user, c.pass)
	}
	fmt.Fprintln(console)
	return nil
}

// patientOf returns patient, or the id of fhirUser when patient is empty
// and fhirUser is a Patient reference ("Patient/85", or an absolute URL
// ending so): a SMART fhirUser that is a Patient is that patient.
func patientOf(patient, fhirUser string) string {
	if patient != "" || fhirUser == "" {
		return patient
	}
	i := strings.LastIndex(fhirUser, "Patient/")
	if i < 0 || i > 0 && fhirUser[i-1] != '/' {
		return ""
	}
	id := fhirUser[i+len("Patient/"):]
	if !fhirreq.IsID(id) {
		return ""
	}
	return id
}
