"""Conversion benchmarks: conversion memory with a slow writer and re-packing a legacy LMDB."""
