#!/bin/sh
# csr-omit-null.sh IN.der OUT.der
#
# tpm2-openssl before 1.3 (Debian 12 ships 1.1.1) writes the CSR's signatureAlgorithm as
# SEQUENCE { ecdsa-with-SHA256, NULL }; RFC 5758 §3.2 says the parameters MUST be omitted, and
# strict parsers (device-ca's, Python cryptography's) refuse the CSR. The outer signatureAlgorithm is
# not covered by the signature, so rewriting it needs no key and leaves the proof of possession intact:
# this copies the signed CertificationRequestInfo and the signature bit for bit and writes the
# ECDSA algorithm identifier without the NULL. Any other CSR (no NULL there, RSA) is copied unchanged.
# POSIX sh, openssl and coreutils (sed, head, tail, od, tr, wc, mktemp): what a device has.
set -eu
in=$1 out=$2
# offset, header length and length of the three elements of the CertificationRequest SEQUENCE
set -- $(openssl asn1parse -inform DER -in "$in" | sed -n 's/^ *\([0-9]*\):d=1 *hl= *\([0-9]*\) *l= *\([0-9]*\).*/\1 \2 \3/p')
[ $# -eq 9 ] || { echo "$in: not a CertificationRequest" >&2; exit 1; }
cri_at=$1 alg_at=$4 alg_hl=$5 alg_len=$6 sig_at=$7
oid_len=$(($(head -c $((alg_at + alg_hl + 2)) "$in" | tail -c 1 | od -An -tu1)))
# ecdsa-with-SHA* is 1.2.840.10045.4.3.x: 2a 86 48 ce 3d 04 03 (RSA's NULL is right and stays)
oid=$(head -c $((alg_at + alg_hl + 2 + oid_len)) "$in" | tail -c "$oid_len" | od -An -tx1 | tr -d ' \n')
case $oid in 2a8648ce3d0403*) ;; *) cp "$in" "$out"; exit 0 ;; esac
if [ "$alg_len" -ne $((oid_len + 4)) ]; then cp "$in" "$out"; exit 0; fi   # no NULL after the OID
body=$(mktemp)
trap 'rm -f "$body"' EXIT
{
    head -c "$alg_at" "$in" | tail -c +$((cri_at + 1))                       # CertificationRequestInfo
    printf "\\060\\$(printf %03o $((oid_len + 2)))"                          # SEQUENCE {
    head -c $((alg_at + alg_hl + 2 + oid_len)) "$in" | tail -c $((oid_len + 2))  #   OID }
    tail -c +$((sig_at + 1)) "$in"                                           # signature BIT STRING
} > "$body"
n=$(wc -c < "$body")
if [ "$n" -lt 128 ]; then header="\\060\\$(printf %03o "$n")"
elif [ "$n" -lt 256 ]; then header="\\060\\201\\$(printf %03o "$n")"
else header="\\060\\202\\$(printf %03o $((n >> 8)))\\$(printf %03o $((n & 255)))"; fi
{ printf "$header"; cat "$body"; } > "$out"
