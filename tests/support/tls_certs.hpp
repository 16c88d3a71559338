#pragma once
// Certificates for the TLS tests, made by the `openssl` command line tool
// (a peer program, as every tool the tests run) into a temp dir at first
// use, once per test process, and removed at exit:
//
//   ca            a private CA (EC P-256), trusted by the tests' clients
//   localhost     CN=localhost, SAN DNS:localhost, IP:127.0.0.1, IP:::1,
//                 signed by ca, valid now
//   expired       the same names, signed by ca, valid only in January 2020
//                 (made with `openssl ca -startdate/-enddate`: OpenSSL 3.0's
//                 x509 command has no -not_before/-not_after)
//   wrong_host    CN and SAN wrong.example, signed by ca
//   self_signed   the localhost names, signed by its own key
//   other_ca      the localhost names, signed by a second CA nobody trusts
//   rsa           as localhost, with an RSA 2048 key (the others are EC
//                 P-256), signed by ca
//
// The `openssl` binary missing fails the test that asked (scripts/deps
// installs it), it never skips.

#include "http_peers.hpp"

#include <doctest/doctest.h>

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

namespace hop_test {

/// A certificate (PEM) and its private key (PEM), as paths.
struct tls_cert_files {
    std::string cert;
    std::string key;
};

/// The test certificates; see the top of this file. Paths are absolute.
struct tls_cert_set {
    std::filesystem::path dir;
    std::string ca;               ///< the trusted private CA's certificate
    tls_cert_files ca_files;      ///< the CA's certificate and key
    tls_cert_files localhost;     ///< valid, for localhost / 127.0.0.1 / ::1
    tls_cert_files expired;       ///< same names, expired in 2020
    tls_cert_files wrong_host;    ///< for wrong.example only
    tls_cert_files self_signed;   ///< localhost names, self-signed
    tls_cert_files other_ca;      ///< localhost names, from an untrusted CA
    std::string other_ca_cert;    ///< that untrusted CA's certificate
    tls_cert_files rsa;           ///< as localhost, with an RSA key
};

namespace detail_tls {

/// Runs `openssl args...` to its end (bounded); a failure throws with what
/// it printed.
inline void run_openssl(std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    std::string line;
    for (const auto& a : args) line += a + " ";
    peer_process p(std::move(args));
    const peer_result r = p.wait(scaled(std::chrono::seconds(60)));
    if (!r.exited_ok()) throw std::runtime_error("tls_certs: `" + line + "` failed: " + r.describe());
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary);
    f << text;
    if (!f) throw std::runtime_error("tls_certs: cannot write " + p.string());
}

inline constexpr const char* localhost_names = "DNS:localhost,IP:127.0.0.1,IP:::1";

/// A new key (EC P-256, or RSA 2048 if `rsa`) and a certificate request for `cn`.
inline void make_key_and_csr(const std::filesystem::path& dir, const std::string& name, const std::string& cn,
                             bool rsa = false) {
    std::vector<std::string> key = {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"};
    if (rsa) key = {"-newkey", "rsa:2048"};
    std::vector<std::string> args = {"req", "-new"};
    args.insert(args.end(), key.begin(), key.end());
    for (std::string a : {"-nodes", "-keyout"}) args.push_back(a);
    for (const auto& a : {(dir / (name + ".key")).string(), std::string("-out"), (dir / (name + ".csr")).string(),
                          std::string("-subj"), "/CN=" + cn}) {
        args.push_back(a);
    }
    run_openssl(std::move(args));
}

/// A self-signed CA certificate and key, `name`.pem / `name`.key.
inline void make_ca(const std::filesystem::path& dir, const std::string& name, const std::string& cn) {
    run_openssl({"req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", (dir / (name + ".key")).string(), "-out", (dir / (name + ".pem")).string(), "-days",
                 "3650", "-subj", "/CN=" + cn, "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                 "keyUsage=critical,keyCertSign,cRLSign"});
}

/// A leaf `name`.pem/.key for `cn` with `san`, signed by CA `ca` (valid a year).
inline void make_leaf(const std::filesystem::path& dir, const std::string& name, const std::string& cn,
                      const std::string& san, const std::string& ca, int serial, bool rsa = false) {
    make_key_and_csr(dir, name, cn, rsa);
    const auto ext = dir / (name + ".ext");
    // An RSA key may also encipher (static-RSA key exchange), as RSA
    // server certificates in the wild do: the tests check that hop refuses
    // that exchange, not that the certificate forbids it.
    write_text(ext, std::string("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature") +
                        (rsa ? ",keyEncipherment" : "") + "\n"
                    "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=" + san + "\n");
    run_openssl({"x509", "-req", "-in", (dir / (name + ".csr")).string(), "-CA", (dir / (ca + ".pem")).string(),
                 "-CAkey", (dir / (ca + ".key")).string(), "-set_serial", std::to_string(serial), "-days", "365",
                 "-sha256", "-extfile", ext.string(), "-out", (dir / (name + ".pem")).string()});
}

inline tls_cert_files files_of(const std::filesystem::path& dir, const std::string& name) {
    return {(dir / (name + ".pem")).string(), (dir / (name + ".key")).string()};
}

struct cert_store {
    temp_dir dir{"hop-tls-"};  // removed when the process exits normally (static destruction)
    tls_cert_set set;

    cert_store() {
        const auto& d = dir.path();
        set.dir = d;
        make_ca(d, "ca", "hop test CA");
        make_ca(d, "other_ca", "hop untrusted test CA");
        make_leaf(d, "localhost", "localhost", localhost_names, "ca", 2);
        make_leaf(d, "wrong_host", "wrong.example", "DNS:wrong.example", "ca", 3);
        make_leaf(d, "other_ca_leaf", "localhost", localhost_names, "other_ca", 4);
        make_leaf(d, "rsa", "localhost", localhost_names, "ca", 5, true);

        // Self-signed: its own issuer, not a CA.
        run_openssl({"req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", (d / "self_signed.key").string(), "-out", (d / "self_signed.pem").string(), "-days",
                     "365", "-subj", "/CN=localhost", "-addext", std::string("subjectAltName=") + localhost_names,
                     "-addext", "basicConstraints=CA:FALSE"});

        // Expired: `openssl ca` takes explicit start and end dates.
        std::filesystem::create_directories(d / "cadb");
        write_text(d / "cadb" / "index.txt", "");
        write_text(d / "cadb" / "serial", "10\n");
        const std::string cnf =
            "[ ca ]\ndefault_ca = hop_ca\n"
            "[ hop_ca ]\n"
            "database = " + (d / "cadb" / "index.txt").string() + "\n" +
            "serial = " + (d / "cadb" / "serial").string() + "\n" +
            "new_certs_dir = " + (d / "cadb").string() + "\n" +
            "certificate = " + (d / "ca.pem").string() + "\n" +
            "private_key = " + (d / "ca.key").string() + "\n" +
            "default_md = sha256\npolicy = any\nunique_subject = no\ncopy_extensions = none\n"
            "x509_extensions = leaf_ext\n"
            "[ any ]\ncommonName = supplied\n"
            "[ leaf_ext ]\nbasicConstraints = CA:FALSE\nsubjectAltName = " + localhost_names + "\n";
        write_text(d / "ca.cnf", cnf);
        make_key_and_csr(d, "expired", "localhost");
        run_openssl({"ca", "-batch", "-config", (d / "ca.cnf").string(), "-startdate", "20200101000000Z", "-enddate",
                     "20200201000000Z", "-notext", "-in", (d / "expired.csr").string(), "-out",
                     (d / "expired.pem").string()});

        set.ca = (d / "ca.pem").string();
        set.ca_files = files_of(d, "ca");
        set.localhost = files_of(d, "localhost");
        set.expired = files_of(d, "expired");
        set.wrong_host = files_of(d, "wrong_host");
        set.self_signed = files_of(d, "self_signed");
        set.other_ca = files_of(d, "other_ca_leaf");
        set.other_ca_cert = (d / "other_ca.pem").string();
        set.rsa = files_of(d, "rsa");
    }
};

}  // namespace detail_tls

/// The test certificates, made at the first call (a few `openssl` runs)
/// and shared by the whole process; the directory goes at exit.
/// @throws std::runtime_error if `openssl` fails (its output in what()).
inline const tls_cert_set& test_certs() {
    static const detail_tls::cert_store store;
    return store.set;
}

}  // namespace hop_test
